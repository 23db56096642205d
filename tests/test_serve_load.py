"""``benchmarks/serve_load.py --quick`` runs end to end, so the load benchmark cannot rot.

Not a timed test: the smoke run starts the four servers (embserve and the bare endpoint, 1 and 2
workers) on loopback ports, checks their answers, runs one short round, times the parts of a
request in-process, and prints the markdown section; this checks that every cell has its row,
the aim is reported and the parts are timed. It takes about 15 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_quick_run_prints_the_load_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"serve_load.py --quick failed:\n{proc.stderr[-5000:]}"
    out = proc.stdout
    assert "| server | workers | batch | req/s (median) |" in out
    for server in ("embserve", "bare"):
        for workers in (1, 2):
            for batch in (1, 256):
                row = re.compile(rf"^\| {server} \| {workers} \| {batch} \| [\d,.]+ \|", re.M)
                assert row.search(out), (server, workers, batch)
    assert "| workers | batch | embserve req/s | bare req/s | embserve / bare |" in out
    assert re.search(r"at batch 1 — 1 worker: [\d.]+ \((met|not met)\); 2 workers: [\d.]+ \(", out)
    assert "### Parts of a request" in out
    assert re.search(
        r"^\| embserve: lookup \(`model\(ids\)`, 26 features\) \| [\d,.]+ \|", out, re.M
    )
    assert "2 cores shared by the servers and the load-generating clients" in out
    assert "(--quick smoke run)" in out
