"""Compiled kernels (numba): arrays and ints in, arrays out.

No configs, files or messages here. Every kernel trusts its inputs; the wrappers in
:mod:`embserve.lookup` make that trust true with :mod:`embserve.kernels.check` first.
"""
