"""Shared pieces of the server tests: a small model, its checkpoints, its config, and the
plain-NumPy answers a request must get."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import embserve as es
from embserve.checkpoint import write_checkpoint_state

MODEL = "rec"

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
