"""Shared pieces of the server tests: a small model, its checkpoints, its config, the
plain-NumPy answers a request must get, and the plumbing of tests against a real server
(ports, requests, metrics, deadlines, a hand-moved clock, the review's amplification body)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from starlette.testclient import TestClient

import embserve as es
from embserve.checkpoint import write_checkpoint_state

MODEL = "rec"
PREDICT = f"/v1/models/{MODEL}:predict"

#: name → (vocabulary_size, dim, combiner)
TABLES: dict[str, tuple[int, int, str]] = {
    "users": (100, 4, "sum"),
    "items": (50, 3, "mean"),
    "tags": (20, 2, "sqrtn"),
}
#: feature path → (table, max_sequence_length)
FEATURES: dict[str, tuple[str, int]] = {
    "user": ("users", 0),
    "hist": ("items", 0),
    "recent": ("items", 3),
    "tag": ("tags", 0),
}


def random_tables(seed: int) -> dict[str, np.ndarray]:
    """Table name → float32 values, different for every seed."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal((vocab, dim)).astype(np.float32)
        for name, (vocab, dim, _) in TABLES.items()
    }


def feature_config(
    tables: Mapping[str, tuple[int, int, str]] = TABLES,
    features: Mapping[str, tuple[str, int]] = FEATURES,
) -> dict[str, es.FeatureConfig]:
    """Fresh config objects for the test model."""
    configs = {
        name: es.TableConfig(vocab, dim, combiner=combiner, name=name)
        for name, (vocab, dim, combiner) in tables.items()
    }
    return {
        path: es.FeatureConfig(configs[table], max_sequence_length=seq)
        for path, (table, seq) in features.items()
    }


def _model_with(values: Mapping[str, np.ndarray]) -> es.TPUEmbeddingForServing:
    tables = {
        name: (int(v.shape[0]), int(v.shape[1]), TABLES.get(name, (0, 0, "mean"))[2])
        for name, v in values.items()
    }
    features = {f"f_{name}": (name, 0) for name in values}
    fc = feature_config(tables, features)
    for cfg in fc.values():
        value = values[str(cfg.table.name)]
        cfg.table.initializer = lambda shape, dtype, v=value: v.astype(dtype)
    model = es.TPUEmbeddingForServing(fc, optimizer=None)
    model.build()
    return model


def save_version(
    directory: str | os.PathLike[str], version: int, tables: Mapping[str, np.ndarray]
) -> str:
    """Save ``tables`` as ``<directory>/ckpt-<version>`` and point the state file at it, as
    ``tf.train.Checkpoint.save`` does (files first, state file last)."""
    ckpt = es.train.Checkpoint(embedding=_model_with(tables))
    ckpt.save_counter = version - 1
    return ckpt.save(os.path.join(os.fspath(directory), "ckpt"))


def write_prefix(prefix: str | os.PathLike[str], tables: Mapping[str, np.ndarray]) -> str:
    """Write ``tables`` at exactly ``prefix`` (no state file)."""
    os.makedirs(os.path.dirname(os.fspath(prefix)), exist_ok=True)
    return es.train.Checkpoint(embedding=_model_with(tables)).write(prefix)


def data_file(prefix: str) -> str:
    """The (single) data shard of a checkpoint prefix."""
    return f"{prefix}.data-00000-of-00001"


def save_damaged_version(
    directory: str | os.PathLike[str], version: int, tables: Mapping[str, np.ndarray]
) -> str:
    """A new version whose data file is truncated before the state file announces it."""
    prefix = os.path.join(os.fspath(directory), f"ckpt-{version}")
    write_prefix(prefix, tables)
    with open(data_file(prefix), "r+b") as f:
        f.truncate(64)
    write_checkpoint_state(directory, prefix)
    return prefix


def config_text(
    checkpoint: str | os.PathLike[str],
    *,
    poll_interval_s: float = 3600.0,
    limits: str = "",
    server: str = "",
    features: Mapping[str, tuple[str, int]] = FEATURES,
    extra_features: str = "",
) -> str:
    """The TOML serving config of the test model."""
    parts = [
        f"""
        [model]
        name = "{MODEL}"
        checkpoint = "{os.fspath(checkpoint)}"
        poll_interval_s = {poll_interval_s}
        """
    ]
    for name, (vocab, dim, combiner) in TABLES.items():
        parts.append(
            f"""
            [[tables]]
            name = "{name}"
            vocabulary_size = {vocab}
            dim = {dim}
            combiner = "{combiner}"
            """
        )
    for path, (table, seq) in features.items():
        parts.append(
            f"""
            [[features]]
            path = "{path}"
            table = "{table}"
            max_sequence_length = {seq}
            """
        )
    text = "".join(textwrap.dedent(p) for p in parts) + textwrap.dedent(extra_features)
    if limits:
        text += "\n[limits]\n" + textwrap.dedent(limits)
    if server:
        text += "\n[server]\n" + textwrap.dedent(server)
    return text


def write_config(path: Path, checkpoint: str | os.PathLike[str], **kwargs: Any) -> Path:
    path.write_text(config_text(checkpoint, **kwargs))
    return path


# ---------------------------------------------------------------------------------------------
# Expected answers


def bag(
    table: np.ndarray, combiner: str, ids: Sequence[int], weights: Sequence[float] | None = None
) -> np.ndarray:
    """One combined bag, as TensorFlow's combiners define it."""
    dim = table.shape[1]
    if not len(ids):
        return np.zeros(dim, dtype=np.float32)
    w = np.ones(len(ids)) if weights is None else np.asarray(weights, dtype=np.float64)
    rows = table[np.asarray(ids)].astype(np.float64)
    total = (w[:, None] * rows).sum(0)
    if combiner == "sum":
        return total
    if combiner == "mean":
        return total / w.sum()
    return total / np.sqrt((w**2).sum())


def sequence(table: np.ndarray, ids: Sequence[int], length: int) -> np.ndarray:
    """A sequence feature's ``[length, dim]`` output: rows in order, padded with zeros."""
    out = np.zeros((length, table.shape[1]), dtype=np.float32)
    for j, i in enumerate(list(ids)[:length]):
        out[j] = table[i]
    return out


def expected(tables: Mapping[str, np.ndarray], feature: str, value: Any) -> np.ndarray:
    """What one example's value of ``feature`` must give (JSON value forms of rest.py)."""
    table_name, seq = FEATURES[feature]
    table = tables[table_name]
    combiner = TABLES[table_name][2]
    weights = None
    if isinstance(value, dict):
        weights = value.get("weights")
        value = value["ids"]
        if isinstance(weights, (int, float)):
            weights = [weights]
    if isinstance(value, int):
        value = [value]
    if value and isinstance(value[0], list):
        return np.stack(
            [
                bag(table, combiner, b, None if weights is None else weights[k])
                for k, b in enumerate(value)
            ]
        )
    if seq:
        return sequence(table, value, seq)
    return bag(table, combiner, value, weights)


# ---------------------------------------------------------------------------------------------
# Plumbing

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on ``HOST`` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: ``(status, lower-cased headers, body)``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` carrying ``labels`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        found_name, _, raw_labels = sample.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        if found_name == name and all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def wait_for(what: str, condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds
    (generous: these tests run on loaded 2-core machines, and no sleep is an assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


class ManualClock:
    """A monotonic clock the test moves by hand (``clock.now += 1.0``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def amplification_body(feature: str = "hist", bags: int = 20_000, batch: int = 256) -> bytes:
    """The review's request: ``batch`` examples, one of them with ``bags`` empty bags (61 KB
    for the defaults), asking for ``batch x bags x dim`` floats."""
    instances: list[dict[str, Any]] = [{feature: [[1]]} for _ in range(batch)]
    instances[0] = {feature: [[] for _ in range(bags)]}
    return json.dumps({"instances": instances}, separators=(",", ":")).encode()


#: How long a held request or a gate waits before the test fails instead of hanging.
HOLD_S = 30.0


class Recording:
    """A real model that records the thread of each call and how many calls overlap, and can
    hold calls at a gate (``gate.clear()``: calls wait; ``entered`` counts the arrivals)."""

    def __init__(self, model: es.TPUEmbeddingForServing) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.running = 0
        self.most_running = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)

    def __call__(self, features: Any, weights: Any = None) -> Any:
        with self.lock:
            self.threads.append(threading.current_thread())
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.entered.release()
        try:
            assert self.gate.wait(HOLD_S)
            return self.model(features, weights)
        finally:
            with self.lock:
                self.running -= 1


def recording_client(config_path: Path) -> tuple[TestClient, list[Recording]]:
    """A client of the app serving the config at ``config_path``, and the :class:`Recording`
    wrapping each model it loads (in load order; ``[0]`` once the client's block has begun)."""
    from embserve.server.app import create_app
    from embserve.server.config import load_config
    from embserve.server.reloader import make_loader

    config = load_config(config_path)
    real = make_loader(config)
    models: list[Recording] = []

    def loader(prefix: str) -> Any:
        models.append(Recording(real(prefix)))
        return models[-1]

    return TestClient(create_app(config, model_loader=loader)), models


@contextlib.contextmanager
def held_request(
    client: TestClient, model: Recording, payload: Any, *, expect: int = 200
) -> Iterator[dict[str, Any]]:
    """Post ``payload`` from another thread and hold its lookup at ``model``'s gate for the
    block (which gets a dict that holds the response, under ``"r"``, once the block is over);
    then let it finish and check its status is ``expect``."""
    model.gate.clear()
    held: dict[str, Any] = {}
    sender = threading.Thread(
        target=lambda: held.setdefault("r", client.post(PREDICT, json=payload))
    )
    sender.start()
    try:
        assert model.entered.acquire(timeout=HOLD_S), held.get("r") and held["r"].text
        yield held
    finally:
        model.gate.set()
        sender.join(HOLD_S)
    assert held["r"].status_code == expect, held["r"].text
