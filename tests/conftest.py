"""Shared test settings: Hypothesis without deadlines (the first calls compile numba kernels)."""

from hypothesis import settings

settings.register_profile("embserve", deadline=None)
settings.load_profile("embserve")
