"""The bundled demo (``make demo``): it serves a checkpoint, shows the answers, and cleans up.

The demo starts the real server in a thread of the test process (``embserve.server.main.running``)
on a free loopback port, so these tests also check that no server thread outlives it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import embserve as es
from embserve.demo import (
    MODEL_NAME,
    build_demo_model,
    demo_request,
    demo_request_body,
    write_demo_files,
)
from embserve.demo.__main__ import main, pretty_json
from embserve.server.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("embserve")]


def test_main_serves_the_checkpoint_and_stops(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    out = io.StringIO()
    assert main(out) == 0
    text = out.getvalue()
    # The status, the request (pretty JSON), the rounded answer and the 400, in that order.
    expected_in_order = [
        f"GET /v1/models/{MODEL_NAME}  →  200",
        '"state": "AVAILABLE"',
        f"POST /v1/models/{MODEL_NAME}:predict",
        '"liked_categories": {"ids": [2, 5], "weights": [1.0, 0.5]}',
        "→  200",
        '"user_id": [0.7, -0.17, 0.74, -0.92]',  # users row 7 (seeded values, rounded)
        '"liked_categories": [-0.684, -0.523, -0.854, 0.192]',  # weighted sqrtn, 3 decimals
        "with an id out of range",
        "→  400",
        "id 1000 at row 0, position 0 is out of range",
        "result: the served activations equal the in-process lookup",
    ]
    position = 0
    for fragment in expected_in_order:
        found = text.find(fragment, position)
        assert found >= 0, f"{fragment!r} missing after position {position} of:\n{text}"
        position = found + len(fragment)
    # Stopped cleanly: no server, reloader or pool thread is left behind.
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == [], [t.name for t in left]
    assert _server_threads() == []


def test_demo_files_are_deterministic_and_servable(tmp_path: Path) -> None:
    a = write_demo_files(tmp_path / "a")
    b = write_demo_files(tmp_path / "b")
    assert os.path.basename(a.checkpoint) == "ckpt-1"
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(a.checkpoint + suffix).read_bytes() == Path(b.checkpoint + suffix).read_bytes()
    # The bundled config names the checkpoint's tables and features.
    config = load_config(a.config)
    assert config.name == MODEL_NAME
    assert set(config.features) == set(a.feature_config)
    served = {str(t.name): (t.vocabulary_size, t.dim, t.combiner) for t in config.tables}
    built = {
        str(c.table.name): (c.table.vocabulary_size, c.table.dim, c.table.combiner)
        for c in a.feature_config.values()
    }
    assert served == built
    # The checkpoint holds the tables and their Adagrad slots, and restores into the config.
    restored = config.new_model()
    es.train.Checkpoint(embedding=restored).restore(a.checkpoint)
    model, _ = build_demo_model()
    saved = {str(t.name): v for t, v in model.embedding_tables.items()}
    for table, values in restored.embedding_tables.items():
        np.testing.assert_array_equal(values, saved[str(table.name)])
    names = [name for name, _ in es.train.list_variables(a.checkpoint)]
    assert any("accumulators" in name for name in names)


def test_request_body_is_the_in_process_request() -> None:
    """The REST body and the embserve inputs are the same batch (the demo compares them)."""
    features, weights = demo_request()
    body = demo_request_body()["instances"]
    assert [i["user_id"] for i in body] == features["user_id"].tolist()
    assert [i["watched_items"] for i in body] == features["watched_items"].to_list()
    assert [i["recent_items"] for i in body] == features["recent_items"].to_list()
    sparse, w = features["liked_categories"], weights["liked_categories"]
    for row, instance in enumerate(body):
        mask = np.asarray(sparse.indices)[:, 0] == row
        assert instance["liked_categories"]["ids"] == np.asarray(sparse.values)[mask].tolist()
        assert instance["liked_categories"]["weights"] == np.asarray(w.values)[mask].tolist()


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2, 3]},
        {"predictions": [{"x": [[0.5] * 8] * 3, "y": list(range(40))}] * 2},
        [],
        {},
        "text",
    ],
)
def test_pretty_json_is_json(value: object) -> None:
    text = pretty_json(value)
    assert json.loads(text) == value
    assert all(len(line) <= 100 for line in text.splitlines()) or "\n" not in text


def test_python_dash_m_entry_point() -> None:
    """``python -m embserve.demo`` (what ``make demo`` runs) exits 0 and prints the answer."""
    proc = subprocess.run(
        [sys.executable, "-m", "embserve.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"predictions": [' in proc.stdout
    assert "→  400" in proc.stdout
