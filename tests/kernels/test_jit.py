"""Threading policy set at import: a bounded OpenMP spin unless the user chose a policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, embserve.kernels._jit as j; "
    "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
)


def _env_after_import(**overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(overrides)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_default_is_a_bounded_spin() -> None:
    assert _env_after_import() == "30000 None"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE"),
        ({"GOMP_SPINCOUNT": "5"}, "5 None"),
    ],
)
def test_a_policy_the_user_set_is_kept(overrides: dict[str, str], expected: str) -> None:
    assert _env_after_import(**overrides) == expected
