"""The bundled demo: a small recommendation model's embedding layer, saved, served and queried.

``make demo`` (or ``python -m embserve.demo``, or ``embserve demo``) runs :mod:`.__main__`:
it writes this module's model as a TensorFlow-format checkpoint into a temporary directory,
serves it with ``embserve serve``'s server on a free loopback port, and sends it one request in
TensorFlow Serving's REST format. This module holds the pieces, which need no server
dependencies:

- :func:`build_demo_model`: three tables (users, items, item categories), deterministic values,
  Adagrad slots, as a training job would have left them;
- :func:`write_demo_files`: that model saved with ``es.train.Checkpoint.save`` next to a copy of
  the bundled serving config (``serving.toml`` in this package);
- :func:`demo_request` / :func:`demo_request_body`: one batch of two examples with dense, ragged,
  sequence and weighted features, as embserve inputs and as the equivalent REST body, so the demo
  can check the served answer against the in-process lookup.

Everything is seeded: the checkpoint and the answers are the same on every run and machine.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Any, NamedTuple

import numpy as np

import embserve as es

__all__ = [
    "CONFIG_NAME",
    "MODEL_NAME",
    "DemoFiles",
    "build_demo_model",
    "demo_request",
    "demo_request_body",
    "serving_config_text",
    "write_demo_files",
]

#: The served model's name, as in the bundled ``serving.toml`` (URLs use it).
MODEL_NAME = "demo"
#: The bundled serving config's file name, in this package and in the demo's directory.
CONFIG_NAME = "serving.toml"
#: The checkpoint directory's name, relative to the config (the config's ``model.checkpoint``).
_CHECKPOINT_DIR = "checkpoints"


def build_demo_model(seed: int = 0) -> tuple[es.TPUEmbeddingForServing, dict[str, Any]]:
    """A three-table model (users, items, item categories) with deterministic values.

    The tables and features are those of the bundled ``serving.toml``. The model is built with
    an Adagrad optimizer, so a checkpoint of it carries each table's ``accumulators`` slot, as
    one written by a TensorFlow training job does (the server restores the tables only).

    Returns:
        The serving object (built, values set) and its feature_config.
    """
    users = es.TableConfig(vocabulary_size=1000, dim=4, combiner="sum", name="users")
    items = es.TableConfig(vocabulary_size=5000, dim=8, combiner="mean", name="items")
    categories = es.TableConfig(vocabulary_size=50, dim=4, combiner="sqrtn", name="categories")
    feature_config = {
        "user_id": es.FeatureConfig(users),
        "watched_items": es.FeatureConfig(items),
        "recent_items": es.FeatureConfig(items, max_sequence_length=3),
        "liked_categories": es.FeatureConfig(categories),
    }
    model = es.TPUEmbeddingForServing(feature_config, optimizer=es.Adagrad(learning_rate=0.1))
    rng = np.random.default_rng(seed)
    for table in model.embedding_tables.values():
        # Stand-in for a trained model: fixed values, rounded to 2 decimals for reading.
        table[...] = np.round(rng.standard_normal(table.shape), 2)
    return model, feature_config


def demo_request() -> tuple[dict[str, Any], dict[str, Any]]:
    """A batch of two examples as embserve inputs: dense, ragged, sequence and weighted features.

    Returns:
        ``(features, weights)`` for ``model(features, weights)``; the same batch as
        :func:`demo_request_body`.
    """
    features = {
        "user_id": np.array([7, 42]),
        "watched_items": es.RaggedTensor.from_list([[10, 11, 12], [3]]),
        "recent_items": es.RaggedTensor.from_list([[5, 6, 7, 8], [9]]),
        "liked_categories": es.SparseTensor(
            indices=[[0, 0], [0, 1], [1, 0]], values=[2, 5, 2], dense_shape=[2, 2]
        ),
    }
    weights = {
        "user_id": None,
        "watched_items": None,
        "recent_items": None,
        "liked_categories": es.SparseTensor(
            indices=[[0, 0], [0, 1], [1, 0]],
            values=np.array([1.0, 0.5, 2.0], np.float32),
            dense_shape=[2, 2],
        ),
    }
    return features, weights


def demo_request_body() -> dict[str, Any]:
    """:func:`demo_request` as a TF Serving REST body (row form: one object per example)."""
    return {
        "instances": [
            {
                "user_id": 7,
                "watched_items": [10, 11, 12],
                "recent_items": [5, 6, 7, 8],
                "liked_categories": {"ids": [2, 5], "weights": [1.0, 0.5]},
            },
            {
                "user_id": 42,
                "watched_items": [3],
                "recent_items": [9],
                "liked_categories": {"ids": [2], "weights": [2.0]},
            },
        ]
    }


def serving_config_text() -> str:
    """The bundled serving config (``serving.toml``), whose checkpoint path is relative."""
    return (importlib.resources.files(__name__) / CONFIG_NAME).read_text(encoding="utf-8")


class DemoFiles(NamedTuple):
    """What :func:`write_demo_files` wrote.

    Attributes:
        config: the serving config's path.
        checkpoint: the checkpoint's prefix (``<directory>/checkpoints/ckpt-1``).
        model: the model that was saved (to compare the served answers with).
        feature_config: its feature_config.
    """

    config: str
    checkpoint: str
    model: es.TPUEmbeddingForServing
    feature_config: dict[str, Any]


def write_demo_files(directory: str | os.PathLike[str], seed: int = 0) -> DemoFiles:
    """Save the demo model as a TensorFlow checkpoint in ``directory``, with its serving config.

    Writes ``<directory>/checkpoints/ckpt-1`` (and the ``checkpoint`` state file naming it)
    with ``es.train.Checkpoint(embedding=model).save``, as ``tf.train.Checkpoint`` would, and
    ``<directory>/serving.toml``, a copy of the bundled config, whose relative checkpoint path
    points at that directory. Generated rather than committed: a few hundred KiB of binary
    files in git would buy nothing, and writing them takes milliseconds.
    """
    root = os.fspath(directory)
    model, feature_config = build_demo_model(seed)
    os.makedirs(os.path.join(root, _CHECKPOINT_DIR), exist_ok=True)
    prefix = es.train.Checkpoint(embedding=model).save(os.path.join(root, _CHECKPOINT_DIR, "ckpt"))
    config = os.path.join(root, CONFIG_NAME)
    with open(config, "w", encoding="utf-8") as f:
        f.write(serving_config_text())
    return DemoFiles(config, prefix, model, feature_config)
