"""Cross-check checkpoints between embserve and TensorFlow 2.21, in both directions.

Runs in the TensorFlow venv (embserve is pip-installed there, editable), from the repository
root::

    .venvs/tf/bin/python tools/check_tf_restores.py            # print the report
    .venvs/tf/bin/python tools/check_tf_restores.py --write    # ... and rewrite TF_RESTORES.md

Why: ``embserve.train.Checkpoint`` claims that what it writes is what
``tf.train.Checkpoint(embedding=TPUEmbeddingForServing(...))`` writes, and that it restores what
TensorFlow writes. Only TensorFlow can confirm the first half, so this script asks it, with
checkpoints that exercise more than the unit tests' fixtures: four tables of odd widths (1, 5, 7,
17) with seeded random values, one of them shared by two features, and every optimizer
(none, SGD, Adagrad, AdagradMomentum, Adam, FTRL, and a per-table mix), so that every slot kind
is written and read with distinctive random values.

embserve → TensorFlow, per optimizer, for checkpoints from ``Checkpoint.save`` and
``Checkpoint.write``:

- ``tf.train.Checkpoint(embedding=tf_emb).restore(path)`` into TensorFlow's
  ``TPUEmbeddingForServing``, once before ``build()`` (restore-on-create) and once after it:
  ``assert_consumed()`` and ``assert_existing_objects_matched()`` pass, every table and slot
  equals what embserve wrote bit for bit, and a lookup (dense, sparse, ragged, weighted and
  sequence features) equals embserve's lookup of the same input;
- ``tf.train.load_checkpoint`` / ``list_variables``: the same names, dtypes, shapes and values.

TensorFlow → embserve, per optimizer:

- ``es.train.Checkpoint(embedding=emb).restore(path)`` of ``tf.train.Checkpoint.save`` output:
  the assertions pass, every table and slot equals TensorFlow's variables bit for bit, the
  lookups agree, and ``es.train.load_checkpoint`` / ``list_variables`` agree with TensorFlow's;
- embserve re-``write``s what it restored: the files must be byte-identical to TensorFlow's,
  per optimizer (features in a flat dict) and per feature structure (nested dict, list, nested
  list, dict of lists, tuple, namedtuple; TensorFlow mirrors nested dicts and lists as object
  graph nodes under ``_feature_config`` and does not track tuples). A failure names the object
  graph nodes only one side writes.

Plus the behaviours that must match TensorFlow's when they fail on purpose: a serving object
without an optimizer restoring a checkpoint with slots (tables restore,
``assert_existing_objects_matched()`` passes, ``assert_consumed()`` raises), in both libraries;
a checkpoint holding a Keras model beside the embedding (embserve restores the embedding); and
``embserve.checkpointing.find_embedding_tables`` on a checkpoint that also holds Keras objects
and a ``tf.Module`` (it must report the embedding's tables and nothing else).

Exit status 1 when any check fails; the report says which and why.

The module imports only the standard library and numpy at import time (TensorFlow and embserve
inside the checks), so it can be imported anywhere; :func:`run_checks` returns the results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "tests" / "data" / "checkpoints" / "TF_RESTORES.md"
COMMAND = ".venvs/tf/bin/python tools/check_tf_restores.py --write"
SEED = 20_251_126
BATCH = 6

# name, vocabulary_size, dim, combiner: odd widths so a row-length mix-up cannot pass.
TABLES = (
    ("user", 13, 7, "mean"),
    ("item", 29, 5, "sum"),
    ("tag", 6, 1, "sqrtn"),
    ("wide", 101, 17, "mean"),
)
OPTIMIZERS = ("none", "sgd", "adagrad", "adagrad_momentum", "adam", "ftrl", "mixed")
# Slot names each optimizer creates, in TensorFlow's order (CHECKPOINT_FORMAT.md §6.4).
SLOTS = {
    "none": (),
    "sgd": (),
    "adagrad": ("accumulators",),
    "adagrad_momentum": ("accumulators", "momenta"),
    "adam": ("momenta", "velocities"),
    "ftrl": ("accumulators", "linears"),
}
# "mixed": per-table optimizers (Adagrad for tables not listed), none for the object.
MIXED = {"item": "adam", "tag": "ftrl", "wide": "none"}


@dataclass(frozen=True)
class Result:
    """One check: what was checked, whether it held, and the numbers or the failure."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"- {'PASS' if self.ok else 'FAIL'}: {self.name}: {self.detail}"


class CheckFailedError(AssertionError):
    """A cross-check did not hold."""


def _require(condition: object, what: str) -> None:
    if not condition:
        raise CheckFailedError(what)


# ---------------------------------------------------------------------------------------------
# One model, built with either library (embserve mirrors tf.tpu.experimental.embedding's API)


def _api(lib: str) -> Any:
    """``tf.tpu.experimental.embedding`` or ``embserve``: the same constructors and names."""
    if lib == "tf":
        import tensorflow as tf

        return tf.tpu.experimental.embedding
    import embserve

    return embserve


def _optimizer(api: Any, kind: str) -> Any:
    """The optimizer object of ``kind`` (``None`` for "none")."""
    return {
        "none": lambda: None,
        "sgd": lambda: api.SGD(learning_rate=0.1),
        "adagrad": lambda: api.Adagrad(learning_rate=0.1),
        "adagrad_momentum": lambda: api.AdagradMomentum(learning_rate=0.1, momentum=0.9),
        "adam": lambda: api.Adam(learning_rate=0.1),
        "ftrl": lambda: api.FTRL(learning_rate=0.1),
    }[kind]()


def table_slots(kind: str, table: str) -> tuple[str, ...]:
    """Slot names of ``table`` under optimizer ``kind``."""
    if kind == "mixed":
        return SLOTS[MIXED.get(table, "adagrad")]
    return SLOTS[kind]


def table_values(seed: int) -> dict[str, np.ndarray]:
    """Seeded random values for every table and slot: ``{"user": ..., "user/momenta": ...}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, vocab, dim, _ in TABLES:
        out[name] = rng.standard_normal((vocab, dim)).astype(np.float32)
        for slot in ("accumulators", "momenta", "velocities", "linears"):
            # Accumulators must stay positive for the update rules; any value restores.
            value = rng.standard_normal((vocab, dim)).astype(np.float32)
            out[f"{name}/{slot}"] = np.abs(value) if slot == "accumulators" else value
    return out


def _structure(api: Any, tables: dict[str, Any], structure: str) -> Any:
    """The ``feature_config`` of the named shape over ``tables``.

    ``"model"`` is the test model (dense, sequence, sparse, weighted and 2-D features; ``item``
    shared by two features). The others give one feature per table in another container, to
    check that the object graph mirrors TensorFlow's for each: TensorFlow tracks dicts and
    lists (and dicts and lists nested in them) under ``_feature_config``, not tuples.
    """
    api_fc = api.FeatureConfig
    u, i, t, w = (api_fc(tables[n], name=n) for n in ("user", "item", "tag", "wide"))
    if structure == "model":
        return {
            "user": {
                "id": api_fc(tables["user"], name="user_id"),
                "history": api_fc(tables["item"], max_sequence_length=4, name="history"),
            },
            "item": api_fc(tables["item"], name="item"),
            "tags": api_fc(tables["tag"], name="tags"),
            "wide": api_fc(tables["wide"], name="wide"),
        }
    return {
        "flat dict": lambda: {"user": u, "item": i, "tag": t, "wide": w},
        "nested dict": lambda: {"a": {"user": u, "item": i}, "tag": t, "wide": w},
        "list": lambda: [u, i, t, w],
        "nested list": lambda: [u, [i, t], w],
        "dict of lists": lambda: {"a": [u, i], "b": [t], "wide": w},
        "tuple": lambda: (u, i, t, w),
        "namedtuple": lambda: FourTables(u, i, t, w),
    }[structure]()


class FourTables(NamedTuple):
    """A namedtuple feature structure (TensorFlow does not track tuples)."""

    user: Any
    item: Any
    tag: Any
    wide: Any


STRUCTURES = ("flat dict", "nested dict", "list", "nested list", "dict of lists", "tuple")
STRUCTURES += ("namedtuple",)


def build_model(
    lib: str, kind: str, values: dict[str, np.ndarray] | None, structure: str = "model"
) -> Any:
    """The test model's ``TPUEmbeddingForServing`` in library ``lib``.

    Args:
        lib: ``"tf"`` or ``"embserve"``.
        kind: the optimizer kind (``OPTIMIZERS``).
        values: initial table values (a writer); ``None`` → zero tables (a reader, so that a
            value that fails to restore shows as zeros).
        structure: the feature structure (see :func:`_structure`).
    """
    api = _api(lib)

    def init_for(name: str) -> Callable[..., Any]:
        def init(shape: Any, dtype: Any = None) -> np.ndarray:
            shape = tuple(int(d) for d in shape)
            if values is None:
                return np.zeros(shape, np.float32)
            _require(values[name].shape == shape, f"initializer shape {shape}")
            return values[name].copy()

        return init

    tables = {}
    for name, vocab, dim, combiner in TABLES:
        # "mixed": every table names its own optimizer (or none) and the object-wide one is
        # None, since a table without one would inherit the object's.
        own = _optimizer(api, MIXED.get(name, "adagrad")) if kind == "mixed" else None
        tables[name] = api.TableConfig(
            vocabulary_size=vocab,
            dim=dim,
            initializer=init_for(name),
            optimizer=own,
            combiner=combiner,
            name=name,
        )
    global_opt = None if kind == "mixed" else _optimizer(api, kind)
    return api.TPUEmbeddingForServing(_structure(api, tables, structure), optimizer=global_opt)


def _set_slots(lib: str, emb: Any, kind: str, values: dict[str, np.ndarray]) -> None:
    """Give every slot its distinctive random value (after build)."""
    for name, *_ in TABLES:
        for slot in table_slots(kind, name):
            if lib == "tf":
                emb._variables[name][slot].assign(values[f"{name}/{slot}"])
            else:
                emb.variables[name][slot][...] = values[f"{name}/{slot}"]


def read_variables(lib: str, emb: Any, kind: str) -> dict[str, np.ndarray]:
    """Every table and slot of a built object as numpy: ``{"user": ..., "user/momenta": ...}``."""
    out = {}
    variables = emb._variables if lib == "tf" else emb.variables
    for name, *_ in TABLES:
        out[name] = np.asarray(variables[name]["parameters"])
        for slot in table_slots(kind, name):
            out[f"{name}/{slot}"] = np.asarray(variables[name][slot])
        extra = set(variables[name]) - {"parameters", *table_slots(kind, name)}
        _require(not extra, f"{lib} object has unexpected slots {sorted(extra)} on {name!r}")
    return out


def expected_variables(kind: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The subset of ``values`` an object with optimizer ``kind`` holds."""
    out = {}
    for name, *_ in TABLES:
        out[name] = values[name]
        for slot in table_slots(kind, name):
            out[f"{name}/{slot}"] = values[f"{name}/{slot}"]
    return out


def _features(lib: str) -> tuple[Any, Any]:
    """One batch for the test model: dense, ragged sequence, sparse, weighted ragged, dense.

    Returns ``(features, weights)`` as TensorFlow tensors or embserve containers.
    """
    rng = np.random.default_rng(SEED + 1)
    user = rng.integers(0, 13, BATCH).astype(np.int64)
    hist_len = np.array([0, 1, 4, 6, 2, 3])  # 6 > max_sequence_length: truncated
    hist = rng.integers(0, 29, hist_len.sum()).astype(np.int64)
    item_idx = np.array([[0, 0], [0, 1], [1, 0], [3, 0], [3, 1], [3, 2], [5, 0]], np.int64)
    item_val = rng.integers(0, 29, len(item_idx)).astype(np.int64)
    tag_len = np.array([2, 0, 1, 3, 1, 2])
    tag = rng.integers(0, 6, tag_len.sum()).astype(np.int64)
    tag_w = rng.uniform(0.5, 2.0, tag_len.sum()).astype(np.float32)
    wide = rng.integers(0, 101, (BATCH, 3)).astype(np.int64)
    if lib == "tf":
        import tensorflow as tf

        features = {
            "user": {
                "id": tf.constant(user),
                "history": tf.RaggedTensor.from_row_lengths(hist, hist_len),
            },
            "item": tf.sparse.SparseTensor(item_idx, item_val, [BATCH, 3]),
            "tags": tf.RaggedTensor.from_row_lengths(tag, tag_len),
            "wide": tf.constant(wide),
        }
        weights = {
            "user": {"id": None, "history": None},
            "item": None,
            "tags": tf.RaggedTensor.from_row_lengths(tag_w, tag_len),
            "wide": None,
        }
        return features, weights
    import embserve as es

    features = {
        "user": {"id": user, "history": es.RaggedTensor.from_row_lengths(hist, hist_len)},
        "item": es.SparseTensor(item_idx, item_val, [BATCH, 3]),
        "tags": es.RaggedTensor.from_row_lengths(tag, tag_len),
        "wide": wide,
    }
    weights = {
        "user": {"id": None, "history": None},
        "item": None,
        "tags": es.RaggedTensor.from_row_lengths(tag_w, tag_len),
        "wide": None,
    }
    return features, weights


def lookup(lib: str, emb: Any) -> dict[str, np.ndarray]:
    """The test batch's lookup results, flattened to ``{"user/id": array, ...}``."""
    features, weights = _features(lib)
    out = emb(features, weights)
    return {
        "user/id": np.asarray(out["user"]["id"]),
        "user/history": np.asarray(out["user"]["history"]),
        "item": np.asarray(out["item"]),
        "tags": np.asarray(out["tags"]),
        "wide": np.asarray(out["wide"]),
    }


def compare_lookups(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Max |a - b| over all features; raises when shapes differ or values are not close.

    Gathers (dense ids, sequences) must be bit-identical; combined bags may differ by float
    rounding of a different summation order, so they are compared to rtol = atol = 1e-6.
    """
    worst = 0.0
    for path in a:
        x, y = a[path], b[path]
        _require(x.shape == y.shape, f"lookup {path!r}: shapes {x.shape} vs {y.shape}")
        if path in ("user/id", "user/history"):
            _require(np.array_equal(x, y), f"lookup {path!r}: gathered rows differ")
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=f"lookup {path!r}")
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0)))
    return worst


def compare_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    """Same names, shapes, dtypes and bits."""
    _require(sorted(got) == sorted(want), f"{what}: variables {sorted(got)} vs {sorted(want)}")
    for name in want:
        g, w = got[name], want[name]
        _require(g.dtype == np.float32, f"{what}: {name} is {g.dtype}")
        _require(g.shape == w.shape, f"{what}: {name} shape {g.shape} vs {w.shape}")
        _require(
            np.array_equal(g.view(np.uint32), w.view(np.uint32)),
            f"{what}: {name} differs ({int(np.sum(g != w))} elements)",
        )


def same_tensor(a: Any, b: Any) -> bool:
    """Whether two ``get_tensor`` results hold the same value: numeric ones bit for bit (dtype
    and shape included), strings element by element (TF gives ``bytes`` for a scalar string,
    embserve a 0-d object array of ``bytes``)."""
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind in "OS" or y.dtype.kind in "OS":
        xs = [bytes(v) for v in x.reshape(-1).tolist()]
        ys = [bytes(v) for v in y.reshape(-1).tolist()]
        return x.shape == y.shape and xs == ys
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _expect_raises(call: Callable[[], Any], what: str) -> str:
    """Run ``call``; it must raise. Returns the exception's class name."""
    try:
        call()
    except Exception as exc:  # TF raises AssertionError; embserve CheckpointMismatchError
        return type(exc).__name__
    raise CheckFailedError(f"{what} did not raise")


# ---------------------------------------------------------------------------------------------
# The checks


def check_embserve_to_tf(tmp: Path, kind: str, method: str, seed: int) -> str:
    """embserve writes (``save`` or ``write``); TensorFlow restores before and after build and
    reads by name. Returns the detail line."""
    import tensorflow as tf

    import embserve as es

    values = table_values(seed)
    emb = build_model("embserve", kind, values)
    emb.build()
    _set_slots("embserve", emb, kind, values)
    ckpt = es.train.Checkpoint(embedding=emb)
    if method == "save":
        path = ckpt.save(tmp / f"es_{kind}_{method}" / "ckpt")
        _require(tf.train.latest_checkpoint(str(Path(path).parent)) == path, "latest_checkpoint")
    else:
        path = ckpt.write(tmp / f"es_{kind}_{method}" / "ckpt")
    want = expected_variables(kind, values)
    es_lookup = lookup("embserve", emb)

    worst = 0.0
    for when in ("before build", "after build"):
        tf_emb = build_model("tf", kind, None)
        if when == "after build":
            tf_emb.build()
        status = tf.train.Checkpoint(embedding=tf_emb).restore(str(path))
        if when == "before build":
            tf_emb.build()
        status.assert_consumed()
        status.assert_existing_objects_matched()
        compare_exact(read_variables("tf", tf_emb, kind), want, f"TF restore {when}")
        worst = max(worst, compare_lookups(lookup("tf", tf_emb), es_lookup))

    reader = tf.train.load_checkpoint(str(path))
    es_reader = es.train.load_checkpoint(path)
    names = [n for n, _ in tf.train.list_variables(str(path))]
    _require(
        tf.train.list_variables(str(path)) == es.train.list_variables(path),
        "list_variables differ",
    )
    _require(
        {k: v.name for k, v in reader.get_variable_to_dtype_map().items()}
        == es_reader.get_variable_to_dtype_map(),
        "dtype maps differ",
    )
    for name in names:
        _require(
            same_tensor(reader.get_tensor(name), es_reader.get_tensor(name)),
            f"load_checkpoint {name}",
        )
    n_slots = len(want) - len(TABLES)
    return (
        f"restore before build and after build: assert_consumed() and "
        f"assert_existing_objects_matched() pass; {len(TABLES)} tables + {n_slots} slots equal "
        f"bit for bit; lookups agree (max |diff| {worst:.1e}); load_checkpoint: "
        f"{len(names)} tensors, names, dtypes and values equal"
    )


def check_tf_to_embserve(tmp: Path, kind: str, seed: int) -> str:
    """TensorFlow saves; embserve restores and reads by name."""
    import tensorflow as tf

    import embserve as es

    values = table_values(seed)
    tf_emb = build_model("tf", kind, values)
    tf_emb.build()
    _set_slots("tf", tf_emb, kind, values)
    path = tf.train.Checkpoint(embedding=tf_emb).save(str(tmp / f"tf_{kind}" / "ckpt"))
    want = read_variables("tf", tf_emb, kind)
    compare_exact(want, expected_variables(kind, values), "TF's own variables")
    tf_lookup = lookup("tf", tf_emb)

    emb = build_model("embserve", kind, None)
    ckpt = es.train.Checkpoint(embedding=emb)
    status = ckpt.restore(path)
    status.assert_consumed()
    status.assert_existing_objects_matched()
    compare_exact(read_variables("embserve", emb, kind), want, "embserve restore")
    worst = compare_lookups(lookup("embserve", emb), tf_lookup)
    _require(ckpt.save_counter == 1, f"save_counter restored as {ckpt.save_counter}")

    names = [n for n, _ in tf.train.list_variables(path)]
    _require(tf.train.list_variables(path) == es.train.list_variables(path), "list_variables")
    tf_reader, es_reader = tf.train.load_checkpoint(path), es.train.load_checkpoint(path)
    for name in names:
        _require(
            same_tensor(tf_reader.get_tensor(name), es_reader.get_tensor(name)),
            f"load_checkpoint {name}",
        )

    return (
        f"assert_consumed() and assert_existing_objects_matched() pass; {len(TABLES)} tables + "
        f"{len(want) - len(TABLES)} slots equal bit for bit; lookups agree (max |diff| "
        f"{worst:.1e}); load_checkpoint and list_variables agree on {len(names)} tensors"
    )


def check_rewrite(tmp: Path, kind: str, structure: str, seed: int) -> str:
    """TensorFlow saves; embserve restores and ``write``s the same object: the files must be
    TensorFlow's, byte for byte (same object graph, node numbering, keys, data order)."""
    import tensorflow as tf

    import embserve as es

    values = table_values(seed)
    tf_emb = build_model("tf", kind, values, structure)
    tf_emb.build()
    _set_slots("tf", tf_emb, kind, values)
    label = f"{kind}_{structure.replace(' ', '_')}"
    path = tf.train.Checkpoint(embedding=tf_emb).save(str(tmp / f"rw_{label}" / "ckpt"))
    emb = build_model("embserve", kind, None, structure)
    ckpt = es.train.Checkpoint(embedding=emb)
    ckpt.restore(path).assert_consumed()
    rewrite = str(ckpt.write(tmp / f"rw_{label}_es" / "ckpt-1"))
    for suffix in (".index", ".data-00000-of-00001"):
        ours, theirs = Path(rewrite + suffix).read_bytes(), Path(path + suffix).read_bytes()
        if ours != theirs:
            raise CheckFailedError(
                f"{suffix} differs ({len(ours)} bytes vs TensorFlow's {len(theirs)}"
                + (
                    f", first difference at byte {_first_difference(ours, theirs)}"
                    if len(ours) == len(theirs)
                    else ""
                )
                + f"); {_graph_difference(path, rewrite)}"
            )
    size = sum(Path(rewrite + x).stat().st_size for x in (".index", ".data-00000-of-00001"))
    return f"identical .index and .data ({size} bytes)"


def _graph_difference(tf_prefix: str, es_prefix: str) -> str:
    """Where two checkpoints' object graphs differ, in words (for a failure message)."""
    from embserve.checkpoint import BundleReader, ObjectGraph

    def tree(prefix: str) -> list[str]:
        graph = ObjectGraph.from_reader(BundleReader(prefix))
        assert graph is not None
        lines: list[str] = []

        def walk(node: int, path: str, depth: int) -> None:
            for name, child in graph.children(node).items():
                if depth < 4 and not (path.endswith("/_variables") or name == "parameters"):
                    lines.append(f"{path}/{name}")
                    walk(child, f"{path}/{name}", depth + 1)

        walk(0, "", 0)
        return lines

    ours, theirs = tree(es_prefix), tree(tf_prefix)
    only_tf = [p for p in theirs if p not in ours]
    only_es = [p for p in ours if p not in theirs]
    if not only_tf and not only_es:
        return "object graphs have the same edges (order, numbering or values differ)"
    return f"object-graph nodes only TensorFlow writes: {only_tf}; only embserve writes: {only_es}"


def _first_difference(a: bytes, b: bytes) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


def check_serving_without_slots(tmp: Path, seed: int) -> str:
    """A serving object without optimizer, restoring an Adam checkpoint, in both libraries:
    tables restore, existing objects match, ``assert_consumed()`` raises (the slots are unused)."""
    import tensorflow as tf

    import embserve as es

    values = table_values(seed)
    writer = build_model("embserve", "adam", values)
    writer.build()
    _set_slots("embserve", writer, "adam", values)
    es_path = es.train.Checkpoint(embedding=writer).save(tmp / "slots_es" / "ckpt")
    tf_writer = build_model("tf", "adam", values)
    tf_writer.build()
    _set_slots("tf", tf_writer, "adam", values)
    tf_path = tf.train.Checkpoint(embedding=tf_writer).save(str(tmp / "slots_tf" / "ckpt"))
    want = expected_variables("none", values)
    raised = []
    for source, path in (("embserve", str(es_path)), ("TF", tf_path)):
        tf_emb = build_model("tf", "none", None)
        status = tf.train.Checkpoint(embedding=tf_emb).restore(path)
        tf_emb.build()
        status.assert_existing_objects_matched()
        raised.append(_expect_raises(status.assert_consumed, f"TF assert_consumed ({source})"))
        compare_exact(read_variables("tf", tf_emb, "none"), want, f"TF restore of {source}'s")

        emb = build_model("embserve", "none", None)
        es_status = es.train.Checkpoint(embedding=emb).restore(path)
        es_status.assert_existing_objects_matched()
        raised.append(
            _expect_raises(es_status.assert_consumed, f"embserve assert_consumed ({source})")
        )
        es_status.expect_partial()
        compare_exact(read_variables("embserve", emb, "none"), want, f"es restore of {source}'s")
    return (
        "Adam checkpoints written by embserve and by TF, restored into objects without an "
        "optimizer by TF and by embserve: tables equal, assert_existing_objects_matched() "
        f"passes, assert_consumed() raises in all four cases ({', '.join(sorted(set(raised)))})"
    )


def check_keras_mixed(tmp: Path, seed: int) -> str:
    """TF saves an embedding next to a Keras model and optimizer; embserve restores the embedding
    part (assert_consumed raises, as TF's does for a partial restore)."""
    import tensorflow as tf

    import embserve as es

    values = table_values(seed)
    tf_emb = build_model("tf", "adagrad", values)
    tf_emb.build()
    _set_slots("tf", tf_emb, "adagrad", values)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    path = tf.train.Checkpoint(embedding=tf_emb, model=model).save(str(tmp / "keras" / "ckpt"))
    emb = build_model("embserve", "adagrad", None)
    status = es.train.Checkpoint(embedding=emb).restore(path)
    status.assert_existing_objects_matched()
    raised = _expect_raises(status.assert_consumed, "embserve assert_consumed (keras)")
    compare_exact(
        read_variables("embserve", emb, "adagrad"),
        expected_variables("adagrad", values),
        "embserve restore next to a Keras model",
    )
    worst = compare_lookups(lookup("embserve", emb), lookup("tf", tf_emb))
    return (
        "tables and slots equal bit for bit, lookups agree (max |diff| "
        f"{worst:.1e}); assert_existing_objects_matched() passes, assert_consumed() raises "
        f"({raised}) for the model's unrestored values, as TensorFlow's does"
    )


def check_find_tables(tmp: Path, seed: int) -> str:
    """``find_embedding_tables`` on a TensorFlow checkpoint that also holds a Keras model (with
    an Embedding layer), a Keras optimizer and a ``tf.Module`` with a ``_variables`` list and a
    ``kernel``: exactly the embedding object's tables and slots, nothing else."""
    import tensorflow as tf

    from embserve.checkpoint import BundleReader
    from embserve.checkpointing import find_embedding_tables

    values = table_values(seed)
    tf_emb = build_model("tf", "adam", values)
    tf_emb.build()
    model = tf.keras.Sequential(
        [
            tf.keras.Input((3,), dtype="int32"),
            tf.keras.layers.Embedding(10, 4),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(2),
        ]
    )
    module = tf.Module()
    module._variables = [tf.Variable(1.0)]
    module.kernel = tf.Variable([1.0, 2.0])
    ckpt = tf.train.Checkpoint(
        embedding=tf_emb, model=model, optimizer=tf.keras.optimizers.Adam(), module=module
    )
    path = ckpt.save(str(tmp / "find" / "ckpt"))
    found = find_embedding_tables(BundleReader(path))
    got = sorted((f.object_path, f.table, f.shape, tuple(sorted(f.slots))) for f in found)
    want = sorted(
        (("embedding",), name, (vocab, dim), ("momenta", "velocities"))
        for name, vocab, dim, _ in TABLES
    )
    extra = [g for g in got if g not in want]
    missing = [w for w in want if w not in got]
    _require(not extra and not missing, f"found extra {extra}, missed {missing}")
    return f"found exactly the {len(want)} tables of the embedding object with their slots"


def _checks(tmp: Path) -> Iterator[tuple[str, Callable[[], str]]]:
    """(name, thunk) of every check, in report order."""
    for i, kind in enumerate(OPTIMIZERS):
        for method in ("save", "write"):
            yield (
                f"embserve Checkpoint.{method}() → TensorFlow, optimizer {kind}",
                lambda kind=kind, method=method, i=i: check_embserve_to_tf(tmp, kind, method, i),
            )
    for i, kind in enumerate(OPTIMIZERS):
        yield (
            f"TensorFlow Checkpoint.save() → embserve, optimizer {kind}",
            lambda kind=kind, i=i: check_tf_to_embserve(tmp, kind, 100 + i),
        )
    for i, kind in enumerate(OPTIMIZERS):
        yield (
            f"TensorFlow save → embserve restore → embserve write, byte-identical, optimizer "
            f"{kind}, one feature per table in a flat dict",
            lambda kind=kind, i=i: check_rewrite(tmp, kind, "flat dict", 400 + i),
        )
    for i, structure in enumerate(("model", *STRUCTURES[1:])):
        yield (
            "TensorFlow save → embserve restore → embserve write, byte-identical, Adagrad, "
            "features in a "
            + ("nested dict (the test model)" if structure == "model" else structure),
            lambda structure=structure, i=i: check_rewrite(tmp, "adagrad", structure, 500 + i),
        )
    yield (
        "slots in the checkpoint, none in the serving object",
        lambda: check_serving_without_slots(tmp, 200),
    )
    yield (
        "embserve.checkpointing.find_embedding_tables next to Keras objects and a tf.Module",
        lambda: check_find_tables(tmp, 600),
    )
    yield (
        "TensorFlow checkpoint with a Keras model beside the embedding → embserve",
        lambda: check_keras_mixed(tmp, 300),
    )


def run_checks(verbose: bool = False) -> list[Result]:
    """Run every cross-check in a temporary directory; one :class:`Result` each."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Restores that leave values unused on purpose make TF log a warning per value.
    tf.get_logger().setLevel("ERROR")
    results = []
    with tempfile.TemporaryDirectory(prefix="embserve-tf-restores-") as tmp:
        for name, check in _checks(Path(tmp)):
            try:
                detail = check()
                results.append(Result(name, True, detail))
            except Exception as exc:
                detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
                if verbose:
                    traceback.print_exc()
                results.append(Result(name, False, detail))
            if verbose:
                print(results[-1].line(), file=sys.stderr, flush=True)
    return results


def _versions() -> dict[str, str]:
    import tensorflow as tf

    import embserve

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return {
        "TensorFlow": tf.__version__,
        "embserve": f"{embserve.__version__} (git {commit})",
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def report(results: list[Result], versions: dict[str, str]) -> str:
    """The markdown report (what ``--write`` stores in TF_RESTORES.md)."""
    passed = sum(r.ok for r in results)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# TensorFlow ↔ embserve checkpoint cross-check",
            "",
            "Checkpoints written by `embserve.train.Checkpoint` restored by TensorFlow's "
            "`TPUEmbeddingForServing` (before and after `build()`) and read by "
            "`tf.train.load_checkpoint`; checkpoints written by TensorFlow restored by "
            "embserve. Generated by `tools/check_tf_restores.py` (its docstring says what each "
            "check does) — do not edit by hand.",
            "",
            f"Command (from the repository root): `{COMMAND}`",
            "",
            "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- run {date}",
            f"- model: tables {', '.join(f'{n} [{v}, {d}] ({c})' for n, v, d, c in TABLES)}; "
            "features: dense ids, a ragged sequence feature (max_sequence_length 4, one row "
            "truncated), sparse ids, weighted ragged ids, dense 2-D ids; `item` shared by two "
            "features; 'mixed' = per-table optimizers: user adagrad, "
            + ", ".join(f"{k} {v}" for k, v in MIXED.items()),
            "",
            f"## Result: {passed} of {len(results)} checks pass",
            "",
            *[r.line() for r in results],
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the report, optionally write it; exit 1 if any check failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {REPORT.relative_to(ROOT)}")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress and tracebacks")
    args = parser.parse_args(argv)
    results = run_checks(verbose=args.verbose)
    text = report(results, _versions())
    print(text)
    if args.write:
        REPORT.write_text(text)
        print(f"wrote {REPORT}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
