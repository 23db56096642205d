"""The bundled demo: a small recommendation model's embedding layer, built and queried.

``make demo`` runs ``python -m embserve.demo``. The server issue turns this into a served
checkpoint; for now it builds the model in-process and prints a few lookups.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import embserve as es

__all__ = ["build_demo_model", "demo_request"]


def build_demo_model(seed: int = 0) -> tuple[es.TPUEmbeddingForServing, dict[str, Any]]:
    """A three-table model (users, items, item categories) with deterministic table values.

    Returns the serving object and its feature_config.
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
        # Stand-in for restoring a trained checkpoint: fixed values, rounded for reading.
        table[...] = np.round(rng.standard_normal(table.shape), 2)
    return model, feature_config


def demo_request() -> tuple[dict[str, Any], dict[str, Any]]:
    """A batch of two examples: dense, ragged, sequence and weighted sparse features."""
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
