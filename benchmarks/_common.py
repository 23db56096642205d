"""Pieces every benchmark script shares: machine facts and the RESULTS.md insertion.

The scripts run as ``python benchmarks/<name>.py``, so this module is imported as ``_common``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = [
    "RESULTS_MARKER",
    "RESULTS_PATH",
    "cpu_model",
    "git_commit",
    "insert_results",
]

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
RESULTS_MARKER = "<!-- newest results first; run.py --write inserts below this line -->"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def git_commit() -> str:
    """``git describe --always --dirty`` of the tree the benchmark ran from."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def insert_results(section: str) -> None:
    """Insert ``section`` right below the marker line of RESULTS.md, keeping every older one."""
    header = (
        "# Benchmark results\n\n"
        "Made by the scripts in `benchmarks/` (see their docstrings for the method). Each "
        "section keeps the command that produced it.\n\n" + RESULTS_MARKER + "\n"
    )
    old = RESULTS_PATH.read_text() if RESULTS_PATH.exists() else header
    if RESULTS_MARKER not in old:
        old = header + "\n" + old
    head, tail = old.split(RESULTS_MARKER, 1)
    RESULTS_PATH.write_text(head + RESULTS_MARKER + "\n\n" + section + "\n" + tail.lstrip("\n"))


def publish(section: str, write: bool) -> None:
    """Print a finished report and, with ``--write``, insert it in RESULTS.md (saying so on
    stderr, so stdout stays the report alone)."""
    print(section)
    if write:
        insert_results(section)
        print(f"wrote {RESULTS_PATH}", file=sys.stderr, flush=True)
