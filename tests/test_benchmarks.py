"""``benchmarks/run.py --quick`` (and ``--sweep --quick``) run end to end, so the benchmark script
cannot rot.

The script is a script, not a timed test (ARCHITECTURE.md, "Habits"); this only checks that its
smoke run finishes, checks every contestant's outputs (the script fails on a mismatch) and prints
the markdown table. ``make test`` installs only the ``dev`` extra: without torch the script leaves
that contestant out, and the torch assertion below is skipped; without matplotlib the sweep's
plots are skipped with a note; TensorFlow is only run when a ``--tf-python`` is given (never here,
but a missing interpreter must leave TF out with a note, not fail).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
WORKLOADS = ("a) 26 one-hot", "b) bags of 1–40 ids", "c) sequence", "d) batch 1")


@pytest.fixture(scope="module")
def quick_output() -> str:
    """stdout of one ``run.py --quick`` (about 10 s warm, 25 s when numba compiles afresh)."""
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"run.py --quick failed:\n{proc.stderr[-5000:]}"
    return proc.stdout


def _rows(output: str, contestant: str) -> list[str]:
    """The result-table rows (they start with the workload title, ``| a) …``) of one contestant."""
    return [
        line
        for line in output.splitlines()
        if line.startswith(tuple(f"| {w}" for w in WORKLOADS)) and f" | {contestant} |" in line
    ]


@pytest.mark.slow
def test_quick_run_prints_the_markdown_table(quick_output: str) -> None:
    assert "| workload | contestant | median µs | min µs | max µs |" in quick_output
    assert "### Machine memory bandwidth" in quick_output
    for contestant in ("numpy", "embserve"):
        rows = _rows(quick_output, contestant)
        for workload in WORKLOADS:
            assert any(workload in row for row in rows), (contestant, workload)


@pytest.mark.slow
def test_quick_run_includes_torch_when_installed(quick_output: str) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (it comes with the 'bench' extra: make bench)")
    rows = _rows(quick_output, "torch")
    assert len(rows) == 8  # a-zipf, a-uniform, b-sum, b-wmean, c-seq, d-latency, b-wsum, b-mean
    assert all("| 1.00× |" in row for row in rows)
    # issue 12: float32 bags against torch on the same memory, paired per round, every bag
    # workload, and the page settings and table mappings they ran on
    assert "- pages: THP enabled = " in quick_output
    section = quick_output.split("### Float32 bags against torch, paired per round")[1]
    section = section.split("\n### ")[0]
    for combiner in ("sum", "weighted sum", "mean", "weighted mean"):
        assert any(f", {combiner} | " in line for line in section.splitlines()), combiner
    assert "every float32 bag workload at least torch's speed on the same memory" in section
    assert "| torch | file " in section


@pytest.mark.slow
def test_quick_run_reports_a_verdict_per_target(quick_output: str) -> None:
    assert "### Targets (issue 6)" in quick_output
    for target in ("a) one-hot", "b) multi-hot", "c) sequence", "d) batch 1", "10× TF", "input"):
        line = next(x for x in quick_output.splitlines() if x.startswith("- ") and target in x)
        assert line.endswith(("met", "not measured", "**not met**")), line


@pytest.mark.slow
def test_quick_sweep_runs_and_plots(tmp_path: Path) -> None:
    """``--sweep --quick``: both sweeps, every point checked; PNGs when matplotlib is there; a
    ``--tf-python`` that does not exist leaves TensorFlow out with a note."""
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--sweep",
            "--quick",
            "--plots-dir",
            str(tmp_path),
            "--tf-python",
            str(tmp_path / "no-such-python"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"run.py --sweep --quick failed:\n{proc.stderr[-5000:]}"
    out = proc.stdout
    assert "### Batch-size sweep" in out
    assert "### Table-size sweep" in out
    assert "tensorflow left out" in out
    for point in ("| 1 | embserve |", "| 256 | embserve |", "| 4,096 | embserve |"):
        assert point in out
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in out
    else:
        assert (tmp_path / "batch_sweep.png").stat().st_size > 10_000
        assert (tmp_path / "table_sweep.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cold_start_script_runs() -> None:
    """``benchmarks/cold_start.py`` (fresh-process readiness, cold and warm cache) runs."""
    script = RUN.with_name("cold_start.py")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| warm (cache from the cold run) |" in proc.stdout


def test_stacked_script_runs_and_checks_its_outputs() -> None:
    """``benchmarks/stacked.py --quick`` (SparseCore stacks against plain tables, issue 11) runs
    end to end: every contestant's outputs are checked equal inside it, so a wrong stacked row
    fails this run, not only a figure."""
    script = RUN.with_name("stacked.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stacked / plain (paired)" in proc.stdout
    assert "Target (issue 11): stacked within 10 % of plain." in proc.stdout


@pytest.mark.slow
def test_quantized_script_runs_and_checks_its_outputs() -> None:
    """``benchmarks/quantized.py --quick`` (issue 12: every storage type through embserve, torch's
    row-wise ops on the same bytes) runs end to end. Every contestant's outputs are checked
    against a float64 reference of the stored rows inside it, so a wrong dequantized row fails
    this run; the report gives a row per storage type, the memory of each served table and the
    page settings."""
    script = RUN.with_name("quantized.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "- pages: THP enabled = " in out
    for table in ("large", "cached"):
        for workload in ("onehot", "bags"):
            for storage in ("float32", "float16", "bfloat16", "int8", "int4"):
                assert f"| {table} | {workload} | embserve {storage} | " in out
        for storage in ("float32", "float16", "bfloat16", "int8", "int4"):
            assert f"| {table}.{storage} | " in out  # resident memory of the served table
    if importlib.util.find_spec("torch") is not None:
        for storage in ("float32", "int8", "int4"):
            assert f"| large | bags | torch {storage} | " in out
        assert "int8 / int4 at least 1.3× torch's quantized ops" in out
    assert "resident memory of the large served tables within 5 % of the stored bytes" in out
