"""Write ``tests/data/sparsecore/``: SparseCore (``TPUEmbeddingV2``) checkpoints built on the CPU
with REAL TensorFlow 2.21's own stacking and saving code, and what TensorFlow 2.21's
``TPUEmbeddingForServing`` makes of them.

Runs ONLY in the separate TensorFlow venv, from the repository root::

    python3 -m venv .venvs/tf && .venvs/tf/bin/pip install tensorflow-cpu==2.21.0 google-crc32c
    .venvs/tf/bin/python tools/make_sparsecore_fixtures.py

Why: issue 11 has embserve restore checkpoints written by ``TPUEmbeddingV2`` on SparseCore TPUs
(stacked, padded, core-interleaved tables sliced per chip, described by a
``_sparse_core_table_layouts`` proto), bit for bit as TensorFlow's ``TPUEmbeddingForServing``
restores them, and refuse the mismatches TensorFlow serves silently. ``TPUEmbeddingV2`` itself
refuses to run outside a TPUStrategy, so each checkpoint is built the way
``../shared/design/SPARSECORE_FORMAT.md`` §12 describes:

- layouts from ``tpu_embedding_v3._stack_tables_with_same_table_dim_and_optimizer`` (the function
  ``TPUEmbeddingV2.__init__`` calls, C++ ``SparseCoreLayoutStacker`` inside) on cloned configs;
  the proto is serialized exactly as ``TPUEmbeddingV2._track_restore_info_for_cpu`` does;
- stacked values packed with the row formula of §3.1 (padding rows and columns hold sentinels),
  checked against TensorFlow's ``unshuffle_from_sc_to_cpu`` + ``remove_padding_from_sc``;
- an ``AutoTrackable`` tracking, in ``TPUEmbeddingV2``'s order, each stack and each
  ``<stack>/<slot>`` as an object whose saveable is one
  ``tpu_embedding_v3.TPUEmbeddingShardedSaveable`` per chip, the ``_variables`` dict
  (``{stack: {slot..., "parameters"}}``) and a ``SparseCoreLayoutsTrackable``; saved with
  ``tf.train.Checkpoint(...).save``.

Then ``TPUEmbeddingForServing`` restores every checkpoint (before ``build()``), and its tables,
variables, restore-status assertions and lookups (dense / ragged / sparse, weighted or not, sum /
mean / sqrtn) are recorded in ``expected.json`` beside the files. ``mismatch/`` holds the cases
where the config and the checkpoint disagree or the checkpoint is damaged, with what TF 2.21 does
(exception or silently served values) and what embserve must do instead. The generated
``tests/data/sparsecore/README.md`` documents the fixtures and the ``expected.json`` schema.

Output is deterministic: values are a function of (table, row, column), ids and weights come from
seeded generators, ``PYTHONHASHSEED`` is pinned (the script re-executes itself with it), JSON keys
are sorted. Any failed self-check exits non-zero.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":  # TF's stacking groups hash the optimizer's dict
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses
import hashlib
import json
import re
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf
from tensorflow.core.tpu.kernels import sparse_core_layout_pb2
from tensorflow.python.tpu import _pywrap_sparse_core_layout
from tensorflow.python.tpu import tpu_embedding_v3 as v3
from tensorflow.python.tpu import tpu_embedding_v3_utils as v3_utils
from tensorflow.python.trackable import autotrackable
from tensorflow.python.trackable import base as trackable_base
from tensorflow.python.util import nest

tf.get_logger().setLevel("ERROR")  # unrestored-value warnings are expected here
E = tf.tpu.experimental.embedding
TF_VERSION = "2.21.0"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "sparsecore"
HEX_LIMIT = 1024  # stored tensors over this many bytes are recorded by sha256 only
ROW_PAD = np.float32(1e30)  # padding rows [R, Rp) of every stack, all columns
COL_PAD = np.float32(np.nan)  # padding columns [D, W) of real rows (bits 0x7fc00000)
INIT_OFFSET = 9000  # RowIdInitializer offset of every serving table: row r starts as 9000 + r
LAYOUTS_KEY_SUFFIX = "/_sparse_core_table_layouts/.ATTRIBUTES/VARIABLE_VALUE"
MAX_MESSAGE = 600

Json = Any


class SelfCheckError(Exception):
    """A self-check failed: TensorFlow disagrees with the construction or with the spec."""


def require(condition: object, detail: object = "") -> None:
    """Like ``assert`` but never stripped by ``python -O``."""
    if not condition:
        raise SelfCheckError(repr(detail))


# ---------------------------------------------------------------------------------------------
# Encoding (the leaf formats of tools/make_fixtures.py, so the same test decoders apply)


def enc_float(x: float) -> float | str:
    x32 = np.float32(x)
    if np.isnan(x32):
        return "nan"
    if np.isinf(x32):
        return "inf" if x32 > 0 else "-inf"
    out = float(str(x32))
    require(np.float32(out) == x32, (x, out))
    return out


def enc_values(a: np.ndarray) -> list[Json]:
    flat = np.asarray(a).reshape(-1)
    if flat.dtype.kind in "iub":
        return [int(v) for v in flat]
    return [enc_float(float(v)) for v in flat]


def enc_f32(a: Any, values: bool = False) -> dict[str, Json]:
    """A float32 array: shape, little-endian C-order bytes as hex, their sha256."""
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    raw = arr.astype("<f4", copy=False).tobytes()
    out: dict[str, Json] = {
        "dtype": "float32",
        "shape": list(arr.shape),
        "data_hex": raw.hex(),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    if values:
        out["values"] = enc_values(arr)
    return out


def enc_output(a: Any) -> dict[str, Json]:
    """A lookup result: the ``array`` leaf of tools/make_fixtures.py (float32 values that
    round-trip exactly; "nan" / "inf" as strings)."""
    arr = np.asarray(a, dtype=np.float32)
    return {
        "type": "array",
        "dtype": "float32",
        "shape": list(arr.shape),
        "values": enc_values(arr),
    }


def scrub(msg: str) -> str:
    msg = re.sub(r"0x[0-9a-fA-F]+", "0x…", msg)
    return msg.replace(str(OUT) + "/", "").replace(str(OUT), ".")


def enc_error(e: BaseException, stage: str) -> dict[str, Json]:
    bases = [
        c.__name__
        for c in type(e).__mro__
        if c.__module__ == "builtins" and c not in (BaseException, Exception, object)
    ]
    return {
        "outcome": "error",
        "stage": stage,
        "tf_class": f"{type(e).__module__}.{type(e).__qualname__}",
        "tf_builtin_bases": bases,
        "message": scrub(str(e))[:MAX_MESSAGE],
    }


def opt_json(o: Any) -> Json:
    if o is None:
        return None
    return {
        "type": "optimizer",
        "class": type(o).__name__,
        "kwargs": {"learning_rate": o.learning_rate},
        "slot_names": list(o._slot_names()),
    }


# ---------------------------------------------------------------------------------------------
# Fixture description


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    vocab: int
    dim: int
    combiner: str
    optimizer: str  # key into the fixture's optimizers


@dataclasses.dataclass
class Spec:
    name: str
    description: str
    tables: list[Table]
    num_partitions: int  # chips
    spp: int  # SparseCores per chip
    optimizers: dict[str, Any]  # key -> TF optimizer object (one object per key)
    global_optimizer: str | None  # key of the optimizer given to TPUEmbeddingForServing
    disable_stacking: bool = False
    output_samples: int = 16  # output_shape=[output_samples] of every feature when stacking
    features: list[tuple[str, str]] | None = None  # (feature name, table name); default f_<t>
    seed: int = 0
    with_slots: bool = True

    def feature_list(self) -> list[tuple[str, str]]:
        return self.features or [(f"f_{t.name}", t.name) for t in self.tables]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def table_base(spec: Spec, name: str) -> int:
    return 1000 * (1 + [t.name for t in spec.tables].index(name))


def logical_values(spec: Spec, name: str, slot_index: int = -1) -> np.ndarray:
    """Table ``name``: row r, column c holds base + r + c/16 (exact in float32); slot j adds
    (j + 1) * 100000, so a value names its table, row, column and slot."""
    t = spec.table(name)
    rows = np.arange(t.vocab, dtype=np.float64)[:, None]
    cols = np.arange(t.dim, dtype=np.float64)[None, :] / 16.0
    value = table_base(spec, name) + rows + cols + (slot_index + 1) * 100000.0
    out = value.astype(np.float32)
    require(np.array_equal(out.astype(np.float64), value), name)  # exact
    return out


# ---------------------------------------------------------------------------------------------
# Layouts with TensorFlow's own stacking function


class _StackerSpy:
    """Wraps the C++ stacker to record the order in which GetLayouts() returns the layouts."""

    seen: ClassVar[list[list[str]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self._real = _REAL_STACKER(**kwargs)

    def AddTable(self, **kwargs: Any) -> None:  # noqa: N802 - the C++ name
        self._real.AddTable(**kwargs)

    def GetLayouts(self) -> Any:  # noqa: N802
        layouts = self._real.GetLayouts()
        _StackerSpy.seen.append([t.table_name for t in layouts.tables])
        return layouts


_REAL_STACKER = _pywrap_sparse_core_layout.SparseCoreLayoutStacker


def tf_tables_and_features(
    spec: Spec,
    *,
    output_shape: bool,
    overrides: dict[str, dict[str, Any]] | None = None,
    drop: tuple[str, ...] = (),
    extra: tuple[Table, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """TableConfig objects by name and the feature dict; ``overrides`` change table fields."""
    overrides = overrides or {}
    tables = {}
    for t in [*spec.tables, *extra]:
        if t.name in drop:
            continue
        kw = {
            "vocabulary_size": t.vocab,
            "dim": t.dim,
            "combiner": t.combiner,
            "optimizer": spec.optimizers[t.optimizer],
            "initializer": E.RowIdInitializer(offset=INIT_OFFSET),
            "name": t.name,
        }
        kw.update(overrides.get(t.name, {}))
        tables[t.name] = E.TableConfig(**kw)
    features = {}
    feats = spec.feature_list() + [(f"f_{t.name}", t.name) for t in extra]
    for fname, tname in feats:
        if tname in tables:
            shape = [spec.output_samples] if output_shape else None
            features[fname] = E.FeatureConfig(tables[tname], output_shape=shape)
    return tables, features


def compute_layouts(spec: Spec) -> tuple[Any, bytes, list[str]]:
    """TableStacking from TF, the serialized layouts as TPUEmbeddingV2 stores them, and the order
    the C++ stacker emitted them in."""
    _, features = tf_tables_and_features(spec, output_shape=True)
    cloned = v3._clone_feature_config(features)
    tables = sorted(
        {id(f.table): f.table for f in nest.flatten(cloned)}.values(), key=lambda t: t.name
    )
    _StackerSpy.seen = []
    _pywrap_sparse_core_layout.SparseCoreLayoutStacker = _StackerSpy
    try:
        stacking = v3._stack_tables_with_same_table_dim_and_optimizer(
            tables,
            nest.flatten_with_joined_string_paths(cloned),
            spec.num_partitions,
            spec.spp,
            v3.SparseCoreEmbeddingConfig(disable_table_stacking=spec.disable_stacking),
        )
    finally:
        _pywrap_sparse_core_layout.SparseCoreLayoutStacker = _REAL_STACKER
    layouts = sparse_core_layout_pb2.SparseCoreTableLayouts()
    layouts.tables.extend(stacking.table_to_layout.values())  # as _track_restore_info_for_cpu
    return stacking, layouts.SerializeToString(), list(_StackerSpy.seen[0])


LAYOUT_FIELDS = (
    "table_name",
    "stacked_table_name",
    "num_sparse_cores",
    "num_partitions",
    "total_rows_per_sparse_core_shard",
    "unsharded_shape",
    "unsharded_padded_shape",
    "sparse_core_shard_row_offset",
    "sparse_core_shard_rotation",
    "per_sparse_core_batch_size",
    "num_features",
    "fdo_key",
)


def layout_json(layout: Any) -> dict[str, Json]:
    out = {}
    for f in LAYOUT_FIELDS:
        v = getattr(layout, f)
        out[f] = list(v) if f.startswith("unsharded") else v
    return out


def parse_layouts(serialized: bytes) -> list[Any]:
    msg = sparse_core_layout_pb2.SparseCoreTableLayouts()
    msg.ParseFromString(serialized)
    return list(msg.tables)


def check_layout_rules(spec: Spec, stacking: Any, serialized: bytes) -> list[str]:
    """The §2.2-2.6 rules of SPARSECORE_FORMAT.md, against what TF computed."""
    n = spec.num_partitions * spec.spp
    layouts = parse_layouts(serialized)
    names = [lay.table_name for lay in layouts]
    require(names == sorted(names), ("proto not in table-name order", names))
    first_feature_table = spec.feature_list() and sorted(spec.feature_list())[0][1]
    by_stack: dict[str, list[Any]] = {}
    for lay in layouts:
        by_stack.setdefault(lay.stacked_table_name, []).append(lay)
        t = spec.table(lay.table_name)
        require(lay.num_sparse_cores == n and lay.num_partitions == spec.num_partitions, lay)
        require(list(lay.unsharded_shape) == [t.vocab, t.dim], lay)
        rp = -(-t.vocab // (8 * n)) * 8 * n
        w = -(-t.dim // 8) * 8
        require(list(lay.unsharded_padded_shape) == [rp, w], (lay, rp, w))
        if lay.table_name == first_feature_table:
            require(lay.per_sparse_core_batch_size == spec.output_samples // spec.spp, lay)
            require(lay.num_features == 1, lay)
        else:
            require(lay.per_sparse_core_batch_size == 0 and lay.num_features == 0, lay)
    for stack, lays in by_stack.items():
        require(stack == "_".join(lay.table_name for lay in lays), stack)
        total = sum(lay.unsharded_padded_shape[0] for lay in lays)
        offset = 0
        for k, lay in enumerate(lays):
            require(lay.total_rows_per_sparse_core_shard == total // n, lay)
            require(lay.sparse_core_shard_row_offset == offset // n, lay)
            require(lay.sparse_core_shard_rotation == (k * spec.spp) % n, lay)
            offset += lay.unsharded_padded_shape[0]
    return names


# ---------------------------------------------------------------------------------------------
# Stacked values


def stacked_row(lay: Any, r: np.ndarray) -> np.ndarray:
    n = lay.num_sparse_cores
    t = lay.total_rows_per_sparse_core_shard
    shard = (r % n + lay.sparse_core_shard_rotation) % n
    return shard * t + lay.sparse_core_shard_row_offset + r // n


def pack_stack(layouts: list[Any], values: dict[str, np.ndarray]) -> np.ndarray:
    """The stack's [T*N, W] tensor: each table placed by the §3.1 formula, padding sentinels."""
    lay0 = layouts[0]
    n, t, w = (
        lay0.num_sparse_cores,
        lay0.total_rows_per_sparse_core_shard,
        lay0.unsharded_padded_shape[1],
    )
    out = np.full((t * n, w), np.nan, np.float32)
    filled = np.zeros(t * n, bool)
    for lay in layouts:
        r_, d_ = lay.unsharded_shape
        rp = lay.unsharded_padded_shape[0]
        full = np.full((rp, w), ROW_PAD, np.float32)
        full[:r_, d_:] = COL_PAD
        full[:r_, :d_] = values[lay.table_name]
        rows = stacked_row(lay, np.arange(rp))
        require(not filled[rows].any(), "overlapping blocks")
        filled[rows] = True
        out[rows] = full
    require(filled.all(), "stack rows not covered")
    return out


def tf_unstack(stack_value: Any, lay: Any) -> np.ndarray:
    """TensorFlow's own unstacking of one table (what ForServing runs on restore)."""
    part = v3_utils.unshuffle_from_sc_to_cpu(
        t=tf.constant(stack_value),
        num_sparse_cores=lay.num_sparse_cores,
        offset_in_shard=lay.sparse_core_shard_row_offset,
        size_in_shard=lay.unsharded_padded_shape[0] // lay.num_sparse_cores,
        shard_rotation=lay.sparse_core_shard_rotation,
    )
    return v3_utils.remove_padding_from_sc(part, tuple(lay.unsharded_shape)).numpy()


# ---------------------------------------------------------------------------------------------
# The checkpoint object: what TPUEmbeddingV2 tracks, with TF's per-chip sharded saveable


class ChipSlicedStack(trackable_base.Trackable):
    """A stacked variable saved as one ``TPUEmbeddingShardedSaveable`` per chip, like
    ``TPUEmbeddingShardedVariable`` (one component per TPU device) does on a TPU."""

    def __init__(self, value: np.ndarray, num_partitions: int, dtype: Any = tf.float32) -> None:
        if value.shape[0] % num_partitions:
            num_partitions = 1  # damaged shapes only: one slice
        self.parts = [
            tf.Variable(p.astype(dtype.as_numpy_dtype))
            for p in np.split(value, num_partitions, axis=0)
        ]

    def saveables(self, name: str) -> list[Any]:
        return [
            v3.TPUEmbeddingShardedSaveable(v, i, len(self.parts), 0, name)
            for i, v in enumerate(self.parts)
        ]

    def _gather_saveables_for_checkpoint(self) -> dict[str, Callable[..., Any]]:
        return {trackable_base.VARIABLE_VALUE_KEY: self.saveables}


@dataclasses.dataclass
class Built:
    obj: Any  # the AutoTrackable standing for TPUEmbeddingV2
    stacks: dict[str, dict[str, Json]]  # stack -> description for expected.json
    stacked_values: dict[str, np.ndarray]  # "<stack>" and "<stack>/<slot>" -> packed value


def build_embedding_object(
    spec: Spec,
    stacking: Any,
    serialized: bytes,
    *,
    mutate_stack: Callable[[str, np.ndarray], np.ndarray | str | None] | None = None,
    stack_dtype: Any = tf.float32,
    plain_tables: dict[str, np.ndarray] | None = None,
    stored_layouts: bytes | None = None,
) -> Built:
    """The object ``TPUEmbeddingV2`` would checkpoint. ``mutate_stack(local_name, value)`` may
    return a replacement value or ``"drop"``; ``stored_layouts`` replaces the stored proto bytes
    (the packing still follows ``serialized``)."""
    layouts = parse_layouts(serialized)
    by_stack: dict[str, list[Any]] = {}
    for lay in layouts:
        by_stack.setdefault(lay.stacked_table_name, []).append(lay)
    obj = autotrackable.AutoTrackable()
    variables: dict[str, dict[str, Any]] = {}
    stacks: dict[str, dict[str, Json]] = {}
    values_out: dict[str, np.ndarray] = {}
    for stack, tables in stacking.stacked_table_to_tables.items():  # TPUEmbeddingV2's order
        lays = by_stack[stack]
        optimizer = tables[0].optimizer
        slots = list(optimizer._slot_names()) if spec.with_slots else []
        entry: dict[str, Any] = {}
        desc: dict[str, Json] = {"tables": [lay.table_name for lay in lays], "slots": {}}
        for j, slot in enumerate(["", *slots]):
            local = stack if not slot else f"{stack}/{slot}"
            vals = {lay.table_name: logical_values(spec, lay.table_name, j - 1) for lay in lays}
            value = pack_stack(lays, vals)
            for lay in lays:  # TF's unstacking gives back the logical table
                require(np.array_equal(tf_unstack(value, lay), vals[lay.table_name]), (stack, slot))
            if mutate_stack is not None:
                changed = mutate_stack(local, value)
                if isinstance(changed, str):
                    require(changed == "drop", changed)
                    continue
                if changed is not None:
                    value = changed
            node = ChipSlicedStack(value, spec.num_partitions, stack_dtype)
            obj._track_trackable(node, local)
            entry[slot or "parameters"] = node
            values_out[local] = value
            key = "embedding/" + esc(local) + "/.ATTRIBUTES/VARIABLE_VALUE"
            rec = {
                "key": key,
                "shape": list(value.shape),
                "chip_slices": [s.specs[0].slice_spec for s in node.saveables(key)],
            }
            if slot:
                desc["slots"][slot] = rec
            else:
                desc.update(rec)
        # _create_variables returns {slots..., "parameters"}: slots first.
        variables[stack] = {k: entry[k] for k in [*slots, "parameters"] if k in entry}
        stacks[stack] = desc
    for name, value in (plain_tables or {}).items():
        obj._track_trackable(tf.Variable(value, name=name), name)
    obj._variables = variables
    obj._track_trackable(
        v3_utils.SparseCoreLayoutsTrackable(
            tf.constant(serialized if stored_layouts is None else stored_layouts, tf.string)
        ),
        v3_utils.SPARSECORE_LAYOUTS_CHECKPOINT_KEY,
    )
    return Built(obj, stacks, values_out)


def esc(name: str) -> str:
    return name.replace(".", "..").replace("/", ".S")


# ---------------------------------------------------------------------------------------------
# Recording what TensorFlow reads


def record_stored(prefix: str) -> dict[str, Json]:
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    tensors = {}
    for key in sorted(dtypes):
        entry: dict[str, Json] = {"dtype": dtypes[key].name, "shape": list(shapes[key])}
        value = reader.get_tensor(key)
        if dtypes[key] == tf.string:
            arr = np.asarray(value, dtype=object)
            entry["strings_hex"] = [bytes(x).hex() for x in arr.reshape(-1)]
        else:
            arr = np.ascontiguousarray(np.asarray(value))
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["sha256"] = hashlib.sha256(raw).hexdigest()
            entry["nbytes"] = len(raw)
            if len(raw) <= HEX_LIMIT:
                entry["data_hex"] = raw.hex()
        tensors[key] = entry
    return {
        "list_variables": [
            {"name": name, "shape": list(shape), "dtype": dtypes[name].name}
            for name, shape in tf.train.list_variables(prefix)
        ],
        "tensors": tensors,
        "data_files": sorted(
            p.name for p in Path(prefix).parent.glob(Path(prefix).name + ".data-*")
        ),
    }


def status_checks(status: Any) -> dict[str, Json]:
    out = {}
    for name in ("assert_consumed", "assert_existing_objects_matched", "assert_nontrivial_match"):
        try:
            getattr(status, name)()
            out[name] = "ok"
        except Exception as e:  # recorded, not raised: this is what TF does
            first = scrub(str(e)).split("[<", 1)[0].strip()
            out[name] = f"{type(e).__name__}: {first}"[:300]
    return out


# Lookups ------------------------------------------------------------------------------------


def lookup_inputs(spec: Spec, vocab: dict[str, int]) -> list[dict[str, Json]]:
    """Six lookups over every feature: dense 1-D / 2-D, ragged and sparse with and without
    weights. Ids cover 0 and R-1 of every table and seeded random rows between."""
    rng = np.random.default_rng(1000 + spec.seed)
    weights_pool = np.array([0.5, 2.0, 1.25, 0.75, 3.0, -1.0, 0.25], np.float32)
    cases: list[dict[str, Json]] = []
    names = ["dense_1d", "dense_2d", "ragged", "ragged_weighted", "sparse", "sparse_weighted"]
    for case in names:
        inputs: dict[str, Json] = {}
        weights: dict[str, Json] = {}
        for fname, tname in spec.feature_list():
            r = vocab[tname]
            if case == "dense_1d":
                ids = np.concatenate([[0, r - 1], rng.integers(0, r, 3)]).astype(np.int64)
                inputs[fname] = {
                    "type": "dense",
                    "dtype": "int64",
                    "shape": [5],
                    "values": enc_values(ids),
                }
            elif case == "dense_2d":
                ids = rng.integers(0, r, (2, 3)).astype(np.int64)
                ids[1, 2] = r - 1
                inputs[fname] = {
                    "type": "dense",
                    "dtype": "int64",
                    "shape": [2, 3],
                    "values": enc_values(ids),
                }
            elif case.startswith("ragged"):
                lengths = [3, 0, 1, 4]
                ids = np.concatenate([[r - 1, 0], rng.integers(0, r, sum(lengths) - 2)])
                splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                inputs[fname] = {
                    "type": "ragged",
                    "dtype": "int64",
                    "splits_dtype": "int64",
                    "values": enc_values(ids.astype(np.int64)),
                    "nested_row_splits": [enc_values(splits)],
                }
                if case.endswith("weighted"):
                    w = rng.choice(weights_pool, sum(lengths))
                    weights[fname] = {
                        "type": "ragged",
                        "dtype": "float32",
                        "splits_dtype": "int64",
                        "values": enc_values(w),
                        "nested_row_splits": [enc_values(splits)],
                    }
            else:
                lengths = [2, 1, 0, 4]
                indices = [[b, j] for b, n in enumerate(lengths) for j in range(n)]
                ids = np.concatenate([[0, r - 1], rng.integers(0, r, sum(lengths) - 2)])
                inputs[fname] = {
                    "type": "sparse",
                    "dtype": "int64",
                    "indices": indices,
                    "values": enc_values(ids.astype(np.int64)),
                    "dense_shape": [4, 4],
                }
                if case.endswith("weighted"):
                    w = rng.choice(weights_pool, sum(lengths))
                    weights[fname] = {
                        "type": "sparse",
                        "dtype": "float32",
                        "indices": indices,
                        "values": enc_values(w),
                        "dense_shape": [4, 4],
                    }
        cases.append({"name": case, "features": inputs, "weights": weights or None})
    return cases


def tf_leaf(d: Json) -> Any:
    if d["type"] == "dense":
        return tf.constant(np.array(d["values"], d["dtype"]).reshape(d["shape"]))
    if d["type"] == "ragged":
        return tf.RaggedTensor.from_row_splits(
            np.array(d["values"], d["dtype"]), np.array(d["nested_row_splits"][0], np.int64)
        )
    return tf.SparseTensor(
        np.array(d["indices"], np.int64).reshape(-1, 2),
        np.array(d["values"], d["dtype"]),
        np.array(d["dense_shape"], np.int64),
    )


def run_lookups(emb: Any, cases: list[dict[str, Json]]) -> list[dict[str, Json]]:
    out = []
    for case in cases:
        feats = {k: tf_leaf(v) for k, v in case["features"].items()}
        weights = None
        if case["weights"]:
            weights = {
                k: tf_leaf(case["weights"][k]) if k in case["weights"] else None for k in feats
            }
        result = emb(feats, weights=weights)
        out.append(
            {
                **case,
                "outputs": {k: enc_output(v.numpy()) for k, v in sorted(result.items())},
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Serving side


def serving_config_json(
    spec: Spec, tables: dict[str, Any], features: dict[str, Any], global_optimizer: Any
) -> dict[str, Json]:
    table_ref = {id(t): name for name, t in tables.items()}
    return {
        "tables": {
            name: {
                "name": t.name,
                "vocabulary_size": t.vocabulary_size,
                "dim": t.dim,
                "combiner": t.combiner,
                "initializer": {"type": "rowid", "offset": INIT_OFFSET},
                "optimizer": opt_json(t.optimizer),
            }
            for name, t in tables.items()
        },
        "feature_config": {
            "type": "dict",
            "items": [
                [
                    fname,
                    {
                        "type": "feature",
                        "table": table_ref[id(f.table)],
                        "max_sequence_length": f.max_sequence_length,
                        "validate_weights_and_indices": f.validate_weights_and_indices,
                        "output_shape": None,
                        "name": f.name,
                    },
                ]
                for fname, f in features.items()
            ],
        },
        "optimizer": opt_json(global_optimizer),
    }


def restore_for_serving(
    spec: Spec,
    prefix: str,
    *,
    root: Callable[[Any], dict[str, Any]] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    drop: tuple[str, ...] = (),
    extra: tuple[Table, ...] = (),
    order: str = "restore_then_build",
    restore_info: dict[str, Any] | None = None,
) -> tuple[Any, Any, dict[str, Json]]:
    """TPUEmbeddingForServing restored from ``prefix``; returns (emb, status, config json)."""
    tables, features = tf_tables_and_features(
        spec, output_shape=False, overrides=overrides, drop=drop, extra=extra
    )
    optimizer = spec.optimizers[spec.global_optimizer] if spec.global_optimizer else None
    kwargs = {}
    if restore_info is not None:
        kwargs["experimental_sparsecore_restore_info"] = restore_info
    emb = E.TPUEmbeddingForServing(features, optimizer, **kwargs)
    config = serving_config_json(spec, tables, features, optimizer)
    children = root(emb) if root else {"embedding": emb}
    if order == "build_then_restore":
        emb.build()
    status = tf.train.Checkpoint(**children).restore(prefix)
    if order == "restore_then_build":
        emb.build()
    return emb, status, config


def served_tables(emb: Any) -> dict[str, np.ndarray]:
    return {t.name: v.numpy() for t, v in emb.embedding_tables.items()}


# ---------------------------------------------------------------------------------------------
# Valid fixtures


FIXTURES: list[dict[str, Json]] = []  # summaries for the README
CHECKS: list[tuple[str, str]] = []  # (PASS/FAIL, line)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def meta() -> dict[str, Json]:
    import keras

    return {
        "generator": "tools/make_sparsecore_fixtures.py",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def topology(spec: Spec) -> dict[str, Json]:
    return {
        "num_partitions": spec.num_partitions,
        "sparse_cores_per_chip": spec.spp,
        "num_sparse_cores": spec.num_partitions * spec.spp,
        "disable_table_stacking": spec.disable_stacking,
        "feature_output_shape_when_stacking": [spec.output_samples],
    }


def make_valid(
    spec: Spec,
    *,
    save: Callable[[Any, Path], tuple[str, str, Callable[[Any], dict[str, Any]] | None]]
    | None = None,
    plain_tables: tuple[Table, ...] = (),
    notes: str = "",
) -> dict[str, Json]:
    """Build, save, restore with ForServing, record. ``save(obj, directory)`` returns (prefix,
    embedding path P, a function making the restore-side Checkpoint children)."""
    directory = fresh(OUT / spec.name)
    stacking, serialized, stacker_order = compute_layouts(spec)
    stored_order = check_layout_rules(spec, stacking, serialized)
    plain_values = {}
    for t in plain_tables:
        spec.tables.append(t)
        plain_values[t.name] = logical_values(spec, t.name)
    built = build_embedding_object(spec, stacking, serialized, plain_tables=plain_values)
    if save is None:
        prefix = tf.train.Checkpoint(embedding=built.obj).save(str(directory / "ckpt"))
        path, root = "embedding", None
    else:
        prefix, path, root = save(built.obj, directory)
    for desc in built.stacks.values():
        desc["key"] = desc["key"].replace("embedding/", path + "/", 1)
        for s in desc["slots"].values():
            s["key"] = s["key"].replace("embedding/", path + "/", 1)

    emb, status, config = restore_for_serving(spec, prefix, root=root)
    got = served_tables(emb)
    restored = {}
    for t in spec.tables:
        expect = logical_values(spec, t.name)
        require(np.array_equal(got[t.name], expect), ("ForServing restore", spec.name, t.name))
        restored[t.name] = enc_f32(got[t.name])
    variables = {name: sorted(d) for name, d in emb.variables.items()}

    # Slots: ForServing never restores them for stacked tables; TF's unstacking of each stored
    # slot stack gives these values.
    reader = tf.train.load_checkpoint(prefix)
    layouts = parse_layouts(serialized)
    slots: dict[str, dict[str, Json]] = {}
    for lay in layouts:
        desc = built.stacks[lay.stacked_table_name]
        for j, (slot, rec) in enumerate(desc["slots"].items()):
            value = tf_unstack(reader.get_tensor(rec["key"]), lay)
            require(np.array_equal(value, logical_values(spec, lay.table_name, j)), (lay, slot))
            record = enc_f32(value)
            del record["data_hex"]  # = value_rule; the sha256 pins the bytes
            slots.setdefault(lay.table_name, {})[slot] = record

    lookups = run_lookups(emb, lookup_inputs(spec, {t.name: t.vocab for t in spec.tables}))
    doc = {
        "meta": meta(),
        "name": spec.name,
        "description": spec.description,
        "notes": notes,
        "checkpoint": os.path.relpath(prefix, directory),
        "latest_checkpoint": os.path.relpath(tf.train.latest_checkpoint(str(directory)), directory),
        "embedding_path": path,
        "layouts_key": path + LAYOUTS_KEY_SUFFIX,
        "topology": topology(spec),
        "padding": {
            "row_padding_hex": np.float32(ROW_PAD).astype("<f4").tobytes().hex(),
            "column_padding_hex": np.float32(COL_PAD).astype("<f4").tobytes().hex(),
            "what": "rows [R, Rp) of every table block hold 1e30 in every column; columns "
            "[D, W) of rows [0, R) hold NaN; in parameter and slot stacks alike",
        },
        "value_rule": "parameters[t][r, c] = base(t) + r + c/16, slot j (0-based, in slot_names "
        "order) adds (j + 1) * 100000; base(t) = 1000 * (1 + index of t in "
        "'table_order')",
        "table_order": [t.name for t in spec.tables],
        "layouts": {
            "serialized_hex": serialized.hex(),
            "tables": [layout_json(lay) for lay in layouts],
            "stacker_emit_order": stacker_order,
            "stored_order": stored_order,
        },
        "stacks": built.stacks,
        "serving": config,
        "stored": record_stored(prefix),
        "restored": restored,
        "for_serving_variables": variables,
        "slots": slots,
        "slots_source": "TF's unshuffle_from_sc_to_cpu + remove_padding_from_sc on the stored "
        "slot stacks: TF 2.21's ForServing restores no slots of stacked tables "
        "(its variables hold only 'parameters' for them)",
        "restore_status": status_checks(status),
        "lookups": lookups,
    }
    write_json(directory / "expected.json", doc)
    FIXTURES.append(
        {
            "name": spec.name,
            "description": spec.description,
            "topology": f"{spec.num_partitions} chip(s) x {spec.spp} SC",
            "stacks": ", ".join(
                f"`{s}` {d['shape'][0]}x{d['shape'][1]}"
                + (f" +{len(d['slots'])} slot(s)" if d["slots"] else "")
                for s, d in built.stacks.items()
            ),
            "status": doc["restore_status"],
            "bytes": dir_size(directory),
        }
    )
    CHECKS.append(
        (
            "PASS",
            f"{spec.name}: ForServing restored {len(spec.tables)} tables "
            "bit-exactly; TF's unstacking of every stack equals the construction",
        )
    )
    return doc


_FLAT_LIST = re.compile(r"\[[^\[\]{}]*\]")


def write_json(path: Path, doc: Json) -> None:
    """Sorted keys, one-space indent, but every list without lists or objects inside on one line
    (arrays of numbers would otherwise take a line per number)."""
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    text = _FLAT_LIST.sub(
        lambda m: re.sub(
            r"\[\n\s*", "[", re.sub(r",\n\s*", ", ", re.sub(r"\n\s*\]", "]", m.group(0)))
        ),
        text,
    )
    require(json.loads(text) == json.loads(json.dumps(doc)), path)
    path.write_text(text + "\n")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def spec_stacked_2x4() -> Spec:
    ada, sgd = E.Adagrad(learning_rate=0.1), E.SGD(learning_rate=0.1)
    return Spec(
        name="stacked_2x4",
        description="The worked example of SPARSECORE_FORMAT.md §9: t_a 100x16 (sum), t_b 37x16 "
        "(mean), t_c 50x12 (sqrtn) with Adagrad stack into `t_a_t_b_t_c` (t_c padded 12->16, "
        "t_b rotated by 4); t_d 64x8 with SGD is alone. 2 chips x 4 SparseCores (v5p), "
        "Adagrad 'accumulators' slot stack",
        tables=[
            Table("t_a", 100, 16, "sum", "adagrad"),
            Table("t_b", 37, 16, "mean", "adagrad"),
            Table("t_c", 50, 12, "sqrtn", "adagrad"),
            Table("t_d", 64, 8, "sum", "sgd"),
        ],
        num_partitions=2,
        spp=4,
        optimizers={"adagrad": ada, "sgd": sgd},
        global_optimizer="adagrad",
        output_samples=32,
        seed=1,
    )


def spec_one_chip_adam() -> Spec:
    adam = E.Adam(learning_rate=0.1)
    return Spec(
        name="one_chip_adam",
        description="1 chip x 4 SparseCores (N=4, no rotation possible): ads 5x2, geo 20x4, "
        "item 40x8 share the width-8 stack `ads_geo_item`; user 7x16 is alone (width 16). Adam: "
        "'momenta' and 'velocities' slot stacks",
        tables=[
            Table("ads", 5, 2, "sum", "adam"),
            Table("geo", 20, 4, "mean", "adam"),
            Table("item", 40, 8, "sqrtn", "adam"),
            Table("user", 7, 16, "sum", "adam"),
        ],
        num_partitions=1,
        spp=4,
        optimizers={"adam": adam},
        global_optimizer="adam",
        seed=2,
    )


def spec_four_chips_ftrl() -> Spec:
    ftrl = E.FTRL(learning_rate=0.1)
    return Spec(
        name="four_chips_ftrl",
        description="4 chips x 2 SparseCores (v6e, N=8): five tables of dims 3, 8, 5, 7, 1 pad "
        "to width 8 and share `t0_t1_t2_t3_t4` with rotations 0, 2, 4, 6, 0; `wide` 11x16 is "
        "alone. FTRL: 'accumulators' and 'linears' slot stacks",
        tables=[
            Table("t0", 5, 3, "sum", "ftrl"),
            Table("t1", 12, 8, "mean", "ftrl"),
            Table("t2", 30, 5, "sqrtn", "ftrl"),
            Table("t3", 40, 7, "sum", "ftrl"),
            Table("t4", 9, 1, "mean", "ftrl"),
            Table("wide", 11, 16, "sqrtn", "ftrl"),
        ],
        num_partitions=4,
        spp=2,
        optimizers={"ftrl": ftrl},
        global_optimizer="ftrl",
        seed=3,
    )


def spec_four_chips_4sc() -> Spec:
    sgd = E.SGD(learning_rate=0.1)
    return Spec(
        name="four_chips_4sc",
        description="4 chips x 4 SparseCores (N=16): a 33x4, b 17x8, c 6x2, d 40x4 in one "
        "width-8 stack with rotations 0, 4, 8, 12 (row 0 of each table on a different chip). "
        "SGD: no slots",
        tables=[
            Table("a", 33, 4, "sum", "sgd"),
            Table("b", 17, 8, "mean", "sgd"),
            Table("c", 6, 2, "sqrtn", "sgd"),
            Table("d", 40, 4, "sum", "sgd"),
        ],
        num_partitions=4,
        spp=4,
        optimizers={"sgd": sgd},
        global_optimizer="sgd",
        seed=4,
    )


def spec_unstacked() -> Spec:
    mom = E.AdagradMomentum(learning_rate=0.1, momentum=0.9)
    return Spec(
        name="unstacked",
        description="SparseCoreEmbeddingConfig(disable_table_stacking=True), 2 chips x 2 "
        "SparseCores: every table is its own stack, named after it; names needing key escaping "
        "('item/sku' -> `item.Ssku`, 'user.id' -> `user..id`). AdagradMomentum: 'accumulators' "
        "and 'momenta' slot stacks",
        tables=[
            Table("item/sku", 10, 4, "sum", "mom"),
            Table("user.id", 25, 8, "mean", "mom"),
            Table("zip", 3, 12, "sqrtn", "mom"),
        ],
        num_partitions=2,
        spp=2,
        optimizers={"mom": mom},
        global_optimizer="mom",
        disable_stacking=True,
        seed=5,
    )


def spec_sharded() -> Spec:
    ada = E.Adagrad(learning_rate=0.1)
    return Spec(
        name="sharded_files",
        description="Saved with CheckpointOptions(experimental_sharding_callback="
        "MaxShardSizePolicy(max_shard_size=3000)): 4 .data files; TF cuts the chip slices "
        "again, into row slices and even column slices, spread over the files. "
        "2 chips x 2 SparseCores, stacks "
        "`s0_s1` (width 8) and `s2` (width 16), Adagrad slots",
        tables=[
            Table("s0", 30, 8, "sum", "ada"),
            Table("s1", 40, 6, "mean", "ada"),
            Table("s2", 20, 16, "sqrtn", "ada"),
        ],
        num_partitions=2,
        spp=2,
        optimizers={"ada": ada},
        global_optimizer="ada",
        seed=6,
    )


def spec_keras(name: str, description: str) -> Spec:
    sgd = E.SGD(learning_rate=0.1)
    return Spec(
        name=name,
        description=description,
        tables=[Table("k0", 12, 4, "sum", "sgd"), Table("k1", 8, 8, "mean", "sgd")],
        num_partitions=1,
        spp=2,
        optimizers={"sgd": sgd},
        global_optimizer="sgd",
        seed=7,
    )


def keras_model() -> Any:
    import keras

    keras.utils.set_random_seed(11)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])


def make_keras_layer_class() -> type:
    import keras

    class EmbeddingHolder(keras.layers.Layer):
        """Holds the embedding object at ``_tpu_embedding``, like Keras-RS's layer on TF."""

        def __init__(self, embedding: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._tpu_embedding = embedding

        def call(self, x: Any) -> Any:
            return x

    return EmbeddingHolder


def save_keras_beside(
    obj: Any, directory: Path
) -> tuple[str, str, Callable[[Any], dict[str, Any]]]:
    model = keras_model()
    prefix = tf.train.Checkpoint(embedding=obj, model=model).save(str(directory / "ckpt"))
    saved_kernel = model.layers[-1].kernel.numpy()

    def root(emb: Any) -> dict[str, Any]:
        restored_model = keras_model()
        restored_model.layers[-1].kernel.assign(np.zeros_like(saved_kernel))
        ROOT_MODELS.append((restored_model, saved_kernel))
        return {"embedding": emb, "model": restored_model}

    return prefix, "embedding", root


def save_keras_nested(
    obj: Any, directory: Path
) -> tuple[str, str, Callable[[Any], dict[str, Any]]]:
    import keras

    holder = make_keras_layer_class()
    model = keras.Sequential(
        [keras.Input((4,)), holder(obj, name="sparsecore"), keras.layers.Dense(3, name="dense")]
    )
    prefix = tf.train.Checkpoint(model=model).save(str(directory / "ckpt"))
    keys = [k for k, _ in tf.train.list_variables(prefix) if k.endswith(LAYOUTS_KEY_SUFFIX)]
    require(len(keys) == 1, keys)
    path = keys[0][: -len(LAYOUTS_KEY_SUFFIX)]

    def root(emb: Any) -> dict[str, Any]:
        restored = keras.Sequential(
            [keras.Input((4,)), holder(emb, name="sparsecore"), keras.layers.Dense(3, name="dense")]
        )
        return {"model": restored}

    return prefix, path, root


ROOT_MODELS: list[tuple[Any, np.ndarray]] = []


def save_sharded(obj: Any, directory: Path) -> tuple[str, str, None]:
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=3000)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    prefix = tf.train.Checkpoint(embedding=obj).save(str(directory / "ckpt"), options=options)
    require(len(list(directory.glob("ckpt-1.data-*"))) > 1, "expected several data files")
    return prefix, "embedding", None


def make_all_valid() -> None:
    make_valid(spec_stacked_2x4())
    make_valid(spec_one_chip_adam())
    make_valid(spec_four_chips_ftrl())
    make_valid(spec_four_chips_4sc())
    make_valid(spec_unstacked())
    make_valid(spec_sharded(), save=save_sharded)
    ROOT_MODELS.clear()
    make_valid(
        spec_keras(
            "keras_beside",
            "tf.train.Checkpoint(embedding=<SparseCore embedding>, "
            "model=<Keras Sequential, one Dense layer>): the embedding at `embedding`, "
            "the Keras variables beside it. 1 chip x 2 SparseCores, SGD",
        ),
        save=save_keras_beside,
    )
    for model, kernel in ROOT_MODELS:
        require(np.array_equal(model.layers[-1].kernel.numpy(), kernel), "keras kernel restored")
    make_valid(
        spec_keras(
            "keras_nested",
            "tf.train.Checkpoint(model=<Keras Sequential>) where a Keras "
            "layer holds the embedding at its `_tpu_embedding` attribute (as Keras-RS's "
            "layer does on TF): P = `model/_functional/_operations/1/_tpu_embedding`. "
            "ForServing restores it when placed at the same path. 1 chip x 2 SC, SGD",
        ),
        save=save_keras_nested,
    )
    sgd = E.SGD(learning_rate=0.1)
    make_valid(
        Spec(
            name="mixed",
            description="A stack `m0_m1` with layouts plus a plain per-table variable "
            "`embedding/plain` [9, 3] that no layout names (SPARSECORE_FORMAT.md §6 2.4): "
            "ForServing restores the stacked tables through the layouts and `plain` from its "
            "own key. 1 chip x 4 SparseCores, SGD",
            tables=[Table("m0", 14, 4, "sum", "sgd"), Table("m1", 3, 8, "mean", "sgd")],
            num_partitions=1,
            spp=4,
            optimizers={"sgd": sgd},
            global_optimizer="sgd",
            seed=8,
        ),
        plain_tables=(Table("plain", 9, 3, "sqrtn", "sgd"),),
        notes="A checkpoint TPUEmbeddingV2 never writes (it lays out every table); it shows "
        "that ForServing falls back to `P/<table>` for config tables no layout names.",
    )


# ---------------------------------------------------------------------------------------------
# Re-saved ForServing checkpoint (SPARSECORE_FORMAT.md §5.3)


def make_resaved() -> None:
    spec = spec_one_chip_adam()
    spec.name = "resaved"
    directory = fresh(OUT / "resaved")
    source = OUT / "one_chip_adam"
    prefix_in = str(source / "ckpt-1")
    emb, _, config = restore_for_serving(spec, prefix_in)
    tables = served_tables(emb)
    prefix = tf.train.Checkpoint(embedding=emb).save(str(directory / "ckpt"))
    outcomes = {}
    for order in ("restore_then_build", "build_then_restore"):
        try:
            emb2, _, _ = restore_for_serving(spec, prefix, order=order)
            got = served_tables(emb2)
            outcomes[order] = {
                "outcome": "served",
                "equals_saved_tables": {
                    k: bool(np.array_equal(v, tables[k])) for k, v in got.items()
                },
            }
        except Exception as e:
            outcomes[order] = enc_error(e, "restore/build")
    doc = {
        "meta": meta(),
        "name": "resaved",
        "description": "The TPUEmbeddingForServing that restored one_chip_adam/ckpt-1, saved "
        "again with tf.train.Checkpoint(embedding=emb).save(): the layouts string is kept, "
        "each stack key holds a float32 scalar 0.0, the real tables are under "
        "`embedding/_variables/<table>/parameters`, no slots (SPARSECORE_FORMAT.md §5.3)",
        "checkpoint": "ckpt-1",
        "latest_checkpoint": "ckpt-1",
        "embedding_path": "embedding",
        "serving": config,
        "stored": record_stored(prefix),
        "tables": {k: enc_f32(v) for k, v in tables.items()},
        "tf_restore": outcomes,
        "embserve_expected": "restore the tables listed under 'tables' from "
        "`embedding/_variables/<table>/parameters` (SPARSECORE_FORMAT.md §10 item 5); TF 2.21 "
        "cannot, see 'tf_restore'",
    }
    write_json(directory / "expected.json", doc)
    FIXTURES.append(
        {
            "name": "resaved",
            "description": doc["description"],
            "topology": "1 chip x 4 SC",
            "stacks": "stack keys hold scalars; per-table `_variables/<t>/parameters`",
            "status": {
                k: (v.get("tf_class", "") + ": " + v.get("message", "")).strip(": ")
                if v["outcome"] == "error"
                else "served"
                for k, v in outcomes.items()
            },
            "bytes": dir_size(directory),
        }
    )


# ---------------------------------------------------------------------------------------------
# Mismatch cases (SPARSECORE_FORMAT.md §7)


def spec_mismatch_base() -> Spec:
    sgd1, sgd2 = E.SGD(learning_rate=0.1), E.SGD(learning_rate=0.2)
    return Spec(
        name="base",
        description="m_a 5x4 (sum), m_b 10x8 (mean), m_c 12x3 (sqrtn) stacked in "
        "`m_a_m_b_m_c` [96, 8] (T=24, offsets 0/8/16, rotations 0/2/0); m_d 6x16 alone (another "
        "SGD learning rate, so another group) [32, 16]. 2 chips x 2 SparseCores, no slots",
        tables=[
            Table("m_a", 5, 4, "sum", "sgd1"),
            Table("m_b", 10, 8, "mean", "sgd1"),
            Table("m_c", 12, 3, "sqrtn", "sgd1"),
            Table("m_d", 6, 16, "sum", "sgd2"),
        ],
        num_partitions=2,
        spp=2,
        optimizers={"sgd1": sgd1, "sgd2": sgd2},
        global_optimizer=None,
        seed=9,
        with_slots=False,
    )


MAIN_STACK = "m_a_m_b_m_c"
LAYOUT_CASE_TABLES = {  # the table whose layout each damaged-layouts case breaks
    "layouts_zero_cores": ["m_b"],
    "layouts_cores_disagree": ["m_c"],
    "layouts_overlapping_blocks": ["m_c"],
    "layouts_offset_out_of_range": ["m_c"],
    "layouts_rotation_out_of_range": ["m_b"],
    "layouts_duplicate_table": ["m_a"],
    "layouts_shape_exceeds_padded": ["m_b"],
    "layouts_shape_rank3": ["m_b"],
}
MAIN_KEY = f"embedding/{MAIN_STACK}/.ATTRIBUTES/VARIABLE_VALUE"
LAYOUTS_KEY = "embedding" + LAYOUTS_KEY_SUFFIX


def layouts_variant(serialized: bytes, edit: Callable[[list[Any]], None]) -> bytes:
    msg = sparse_core_layout_pb2.SparseCoreTableLayouts()
    msg.ParseFromString(serialized)
    tables = list(msg.tables)
    edit(tables)
    out = sparse_core_layout_pb2.SparseCoreTableLayouts()
    out.tables.extend(tables)
    return out.SerializeToString()


def find(tables: list[Any], name: str) -> Any:
    return next(t for t in tables if t.table_name == name)


@dataclasses.dataclass
class Case:
    name: str
    description: str
    checkpoint: str = "base"  # directory under mismatch/
    overrides: dict[str, dict[str, Any]] | None = None
    drop: tuple[str, ...] = ()
    extra: tuple[Table, ...] = ()
    order: str = "restore_then_build"
    restore_info: dict[str, Any] | None = None
    embserve: dict[str, Json] | None = None
    fixture: Callable[[], Spec] | None = None  # a valid fixture's spec; checkpoint = its dir


def make_damaged(
    spec: Spec,
    name: str,
    *,
    layouts: bytes | None = None,
    mutate: Callable[[str, np.ndarray], np.ndarray | str | None] | None = None,
    dtype: Any = tf.float32,
    description: str,
) -> dict[str, Json]:
    stacking, serialized, _ = compute_layouts(spec)
    built = build_embedding_object(
        spec,
        stacking,
        serialized,
        mutate_stack=mutate,
        stack_dtype=dtype,
        stored_layouts=layouts,
    )
    directory = fresh(OUT / "mismatch" / name)
    tf.train.Checkpoint(embedding=built.obj).save(str(directory / "ckpt"))
    return {"directory": name, "description": description}


def run_case(spec: Spec, case: Case) -> dict[str, Json]:
    if case.fixture is not None:
        spec = case.fixture()
    prefix = str(OUT / "mismatch" / case.checkpoint / "ckpt-1")
    truth = {t.name: logical_values(spec, t.name) for t in spec.tables}
    tables, features = tf_tables_and_features(
        spec, output_shape=False, overrides=case.overrides, drop=case.drop, extra=case.extra
    )
    optimizer = spec.optimizers[spec.global_optimizer] if spec.global_optimizer else None
    config = serving_config_json(spec, tables, features, optimizer)
    kwargs = {}
    if case.restore_info is not None:
        kwargs["experimental_sparsecore_restore_info"] = case.restore_info
    outcome: dict[str, Json]
    stage = "construct"
    try:
        emb = E.TPUEmbeddingForServing(features, optimizer, **kwargs)
        if case.order == "build_then_restore":
            stage = "build"
            emb.build()
        stage = "restore"
        status = tf.train.Checkpoint(embedding=emb).restore(prefix)
        if case.order == "restore_then_build":
            stage = "build"
            emb.build()
        stage = "embedding_tables"
        got = served_tables(emb)
        stage = "lookup"
        dense = emb({fname: tf.constant([0, 1], tf.int64) for fname in features})
        served = {}
        for name, value in got.items():
            init = (
                np.broadcast_to(
                    (INIT_OFFSET + np.arange(value.shape[0], dtype=np.float32))[:, None],
                    value.shape,
                )
                if value.ndim == 2
                else None
            )
            if name in truth and np.array_equal(value, truth[name]):
                what = "correct"
            elif init is not None and np.array_equal(value, init):
                what = "initializer"
            elif name in truth and value.shape == truth[name].shape:
                what = "wrong values"
            else:
                what = "wrong shape"
            record = enc_f32(value)
            if what in ("correct", "initializer"):  # bytes known: base.tables / the rule
                del record["data_hex"]
            served[name] = {
                "verdict": what,
                "config_shape": [tables[name].vocabulary_size, tables[name].dim],
                **record,
            }
        outcome = {
            "outcome": "served",
            "tables": served,
            "dense_lookup_ids_0_1": {k: enc_output(v.numpy()) for k, v in dense.items()},
            "restore_status": status_checks(status),
        }
    except Exception as e:  # recorded: what TF raises is the point
        outcome = enc_error(e, stage)
    return {
        "name": case.name,
        "description": case.description,
        "checkpoint": f"{case.checkpoint}/ckpt-1",
        "table_order": [t.name for t in spec.tables],
        "order": case.order,
        "experimental_sparsecore_restore_info": case.restore_info,
        "serving": config,
        "tf": outcome,
        "embserve_expected": case.embserve,
    }


def mismatch_error(cls: str, names: list[str]) -> dict[str, Json]:
    return {"raises": cls, "message_names": names, "object_unchanged": True}


def make_mismatch() -> None:
    spec = spec_mismatch_base()
    fresh(OUT / "mismatch")
    base_stacking, serialized, _ = compute_layouts(spec)
    check_layout_rules(spec, base_stacking, serialized)
    built = build_embedding_object(spec, base_stacking, serialized)
    fresh(OUT / "mismatch" / "base")
    tf.train.Checkpoint(embedding=built.obj).save(str(OUT / "mismatch" / "base" / "ckpt"))
    damaged: list[dict[str, Json]] = [{"directory": "base", "description": spec.description}]
    n = 4

    def edit(fn: Callable[[list[Any]], None]) -> bytes:
        return layouts_variant(serialized, fn)

    def set_field(table: str, **fields: Any) -> Callable[[list[Any]], None]:
        def fn(tables: list[Any]) -> None:
            lay = find(tables, table)
            for k, v in fields.items():
                if isinstance(v, list):
                    del getattr(lay, k)[:]
                    getattr(lay, k).extend(v)
                else:
                    setattr(lay, k, v)

        return fn

    def on_main(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[str, np.ndarray], Any]:
        return lambda name, value: fn(value) if name == MAIN_STACK else None

    def duplicate_m_a(tables: list[Any]) -> None:
        dup = sparse_core_layout_pb2.SparseCoreTableLayout()
        dup.CopyFrom(find(tables, "m_c"))
        dup.table_name = "m_a"
        del dup.unsharded_shape[:]
        dup.unsharded_shape.extend([5, 4])
        del dup.unsharded_padded_shape[:]
        dup.unsharded_padded_shape.extend([32, 8])
        tables.insert(1, dup)

    rng = np.random.default_rng(99)
    variants = [
        (
            "stack_rows_not_multiple",
            dict(mutate=on_main(lambda v: np.concatenate([v, v[:1]]))),
            "stack `m_a_m_b_m_c` stored with 97 rows (T*N + 1, not a multiple of N=4); layouts "
            "unchanged; one slice",
        ),
        (
            "stack_rows_short",
            dict(mutate=on_main(lambda v: v[: 20 * n])),
            "stack stored with its first 80 rows (T would be 20, not 24; still a multiple of N)",
        ),
        (
            "stack_rows_long",
            dict(
                mutate=on_main(lambda v: np.concatenate([v, np.full((8 * n, 8), -5.0, np.float32)]))
            ),
            "stack stored with 32 extra rows of -5.0 (128 rows: T would be 32, not 24)",
        ),
        (
            "stack_narrow",
            dict(mutate=on_main(lambda v: np.ascontiguousarray(v[:, :4]))),
            "stack stored 4 columns wide; its layouts say W=8 (m_b has dim 8)",
        ),
        (
            "stack_wide",
            dict(
                mutate=on_main(
                    lambda v: np.concatenate([v, np.full((v.shape[0], 8), -7.0, np.float32)], 1)
                )
            ),
            "stack stored 16 columns wide (extra columns -7.0); its layouts say W=8",
        ),
        (
            "stack_missing",
            dict(mutate=lambda name, v: "drop" if name == MAIN_STACK else None),
            "the layouts name stack `m_a_m_b_m_c` but the checkpoint has no key for it",
        ),
        ("stack_float64", dict(dtype=tf.float64), "every stack stored as float64 (same values)"),
        (
            "layouts_truncated",
            dict(layouts=serialized[: len(serialized) // 2]),
            "the layouts string cut in half (inside a message)",
        ),
        (
            "layouts_garbage",
            dict(layouts=bytes(rng.integers(0, 256, 48, dtype=np.uint8))),
            "the layouts string replaced by 48 seeded random bytes",
        ),
        (
            "layouts_empty",
            dict(layouts=b""),
            "the layouts string is empty while the stack keys are present",
        ),
        (
            "layouts_zero_cores",
            dict(layouts=edit(set_field("m_b", num_sparse_cores=0))),
            "m_b's layout says num_sparse_cores = 0",
        ),
        (
            "layouts_cores_disagree",
            dict(layouts=edit(set_field("m_c", num_sparse_cores=2))),
            "m_c's layout says N=2 while the other layouts of its stack say 4",
        ),
        (
            "layouts_overlapping_blocks",
            dict(layouts=edit(set_field("m_c", sparse_core_shard_row_offset=8))),
            "m_c's row offset is 8, the block of m_b (blocks overlap; rows 16-23 unowned)",
        ),
        (
            "layouts_offset_out_of_range",
            dict(layouts=edit(set_field("m_c", sparse_core_shard_row_offset=20))),
            "m_c's block [20, 28) runs past T=24",
        ),
        (
            "layouts_rotation_out_of_range",
            dict(layouts=edit(set_field("m_b", sparse_core_shard_rotation=6))),
            "m_b's rotation is 6 >= N=4 (6 mod 4 = 2, its real rotation)",
        ),
        (
            "layouts_duplicate_table",
            dict(layouts=edit(duplicate_m_a)),
            "a second layout for m_a (pointing at m_c's block) follows the real one",
        ),
        (
            "layouts_shape_exceeds_padded",
            dict(layouts=edit(set_field("m_b", unsharded_shape=[40, 8]))),
            "m_b's unsharded_shape [40, 8] exceeds its padded shape [32, 8]",
        ),
        (
            "layouts_shape_rank3",
            dict(layouts=edit(set_field("m_b", unsharded_shape=[10, 8, 1]))),
            "m_b's unsharded_shape has 3 elements [10, 8, 1]",
        ),
        (
            "layouts_unknown_table",
            dict(layouts=edit(set_field("m_c", table_name="m_x"))),
            "m_c's layout is renamed m_x (a table the config does not have)",
        ),
    ]
    for name, kwargs, description in variants:
        damaged.append(make_damaged(spec, name, description=description, **kwargs))

    per_table_key = "embedding/" + MAIN_STACK + "/.ATTRIBUTES/VARIABLE_VALUE"
    cases = [
        Case(
            "control",
            "the base checkpoint and its own config: the correct restore",
            embserve={"serves": "correct"},
        ),
        Case(
            "restore_info_given",
            "experimental_sparsecore_restore_info={'num_tpu_devices': 2} passed to the constructor",
            restore_info={"num_tpu_devices": 2},
            embserve={"serves": "correct", "note": "accepted; TF ignores it"},
        ),
        Case(
            "build_then_restore",
            "build() before restore()",
            order="build_then_restore",
            embserve={
                "serves": "correct",
                "note": "SPARSECORE_FORMAT.md §10 recommends restoring correctly in either order",
            },
        ),
        Case(
            "build_then_restore_2x4",
            "build() before restore(), on the valid fixture "
            "stacked_2x4: t_d is a lone, unpadded stack (64x8 = its padded shape)",
            order="build_then_restore",
            checkpoint="../stacked_2x4",
            fixture=spec_stacked_2x4,
            embserve={"serves": "correct", "note": "the tables of ../stacked_2x4/expected.json"},
        ),
        Case(
            "config_vocab_smaller",
            "config says m_a has 4 rows; the layout says 5",
            overrides={"m_a": {"vocabulary_size": 4}},
            embserve=mismatch_error("CheckpointMismatchError", ["m_a", per_table_key]),
        ),
        Case(
            "config_vocab_larger",
            "config says m_a has 7 rows; the layout says 5",
            overrides={"m_a": {"vocabulary_size": 7}},
            embserve=mismatch_error("CheckpointMismatchError", ["m_a", per_table_key]),
        ),
        Case(
            "config_dim_smaller",
            "config says m_b has dim 6; the layout says 8",
            overrides={"m_b": {"dim": 6}},
            embserve=mismatch_error("CheckpointMismatchError", ["m_b", per_table_key]),
        ),
        Case(
            "config_dim_larger",
            "config says m_c has dim 5 (still <= W=8); the layout says 3",
            overrides={"m_c": {"dim": 5}},
            embserve=mismatch_error("CheckpointMismatchError", ["m_c", per_table_key]),
        ),
        Case(
            "config_table_without_layout",
            "config adds table m_x 4x4 (feature f_m_x); no layout and no per-table key names it",
            extra=(Table("m_x", 4, 4, "sum", "sgd1"),),
            embserve={
                **mismatch_error("CheckpointMismatchError", ["m_x"]),
                "note": "no layout and no `embedding/m_x` key; a config table with no "
                "layout but with its per-table key restores from that key (fixture "
                "'mixed'), as TF does",
            },
        ),
        Case(
            "config_lacks_stack_member",
            "config omits m_b, which shares stack m_a_m_b_m_c with requested tables",
            drop=("m_b",),
            embserve={
                "serves": "subset",
                "note": "issue 11: a checkpoint holding more "
                "tables than the config asks for serves the asked-for subset (the "
                "requested tables as in base.tables)",
            },
        ),
        Case(
            "config_lacks_whole_stack",
            "config omits m_d, the only table of stack m_d",
            drop=("m_d",),
            embserve={"serves": "subset"},
        ),
        Case(
            "config_only_one_table",
            "config asks for m_c only",
            drop=("m_a", "m_b", "m_d"),
            embserve={"serves": "subset"},
        ),
    ]
    corrupt_stack = {
        "stack_rows_not_multiple",
        "stack_rows_short",
        "stack_rows_long",
        "stack_narrow",
        "stack_wide",
        "stack_float64",
    }
    for d in damaged[1:]:
        name = d["directory"]
        if name in corrupt_stack:
            expect = mismatch_error("CorruptCheckpointError", [MAIN_STACK, per_table_key])
            if name == "stack_float64":
                expect = mismatch_error("CheckpointMismatchError", [MAIN_STACK, per_table_key])
        elif name == "stack_missing":
            expect = mismatch_error("CheckpointMismatchError", [MAIN_STACK, per_table_key])
        elif name == "layouts_unknown_table":
            expect = mismatch_error("CheckpointMismatchError", ["m_c"])
        else:
            expect = mismatch_error(
                "CorruptCheckpointError", [*LAYOUT_CASE_TABLES.get(name, []), LAYOUTS_KEY]
            )
        if name == "stack_float64":
            expect["note"] = (
                "the dtype differs from what the layouts imply (float32); "
                "CheckpointMismatchError as for a plain table of another dtype "
                "(CorruptCheckpointError is defensible too)"
            )
        if name == "layouts_rotation_out_of_range":
            expect["note"] = (
                "TF serves the right values (its roll is modulo N); "
                "SPARSECORE_FORMAT.md §10.3 asks to refuse rotation >= N, which the "
                "stacker never writes"
            )
        if name == "stack_wide":
            expect["note"] = "TF serves the right values (it slices [:R, :D])"
        if name == "layouts_empty":
            expect = mismatch_error("CheckpointMismatchError", ["m_a", "embedding/m_a"])
            expect["note"] = (
                "an empty layouts string means a plain per-table checkpoint "
                "(SPARSECORE_FORMAT.md §10.1), whose per-table keys are missing"
            )
        cases.append(Case(name, d["description"], checkpoint=name, embserve=expect))

    results = [run_case(spec, c) for c in cases]
    control = results[0]["tf"]
    require(
        control["outcome"] == "served"
        and all(t["verdict"] == "correct" for t in control["tables"].values()),
        control,
    )
    doc = {
        "meta": meta(),
        "description": "Mismatch and damage cases (SPARSECORE_FORMAT.md §7). 'base/' is a good "
        "checkpoint; every other directory is base with one defect. Each case restores a "
        "checkpoint with TF 2.21's TPUEmbeddingForServing and records what TF did ('tf': an "
        "error, or the tables it served with a verdict) and what embserve must do instead "
        "('embserve_expected')",
        "base": {
            "spec": spec.description,
            "topology": topology(spec),
            "table_order": [t.name for t in spec.tables],
            "value_rule": "parameters[t][r, c] = base(t) + r + c/16; base(t) = 1000 * (1 + "
            "index of t in 'table_order')",
            "initializer_rule": f"serving tables use RowIdInitializer(offset={INIT_OFFSET}): "
            f"row r of a table TF did not restore holds {INIT_OFFSET} + r",
            "layouts": [layout_json(lay) for lay in parse_layouts(serialized)],
            "layouts_serialized_hex": serialized.hex(),
            "tables": {t.name: enc_f32(logical_values(spec, t.name)) for t in spec.tables},
        },
        "checkpoints": damaged,
        "cases": results,
    }
    write_json(OUT / "mismatch" / "expected.json", doc)
    CHECKS.append(
        (
            "PASS",
            f"mismatch/control: ForServing restored the {len(spec.tables)} "
            "tables of mismatch/base bit-exactly",
        )
    )
    MISMATCH.extend(results)


MISMATCH: list[dict[str, Json]] = []


def summary(tf_outcome: dict[str, Json]) -> str:
    if tf_outcome["outcome"] == "error":
        msg = tf_outcome["message"].splitlines()[0] if tf_outcome["message"] else ""
        return f"{tf_outcome['tf_class'].rsplit('.', 1)[-1]} at {tf_outcome['stage']}: {msg[:150]}"
    verdicts = {}
    for name, t in tf_outcome["tables"].items():
        label = f"{name} {t['shape'][0]}x{t['shape'][1]}" if len(t["shape"]) == 2 else name
        if t["shape"] != t["config_shape"]:
            label += f" (config: {t['config_shape'][0]}x{t['config_shape'][1]})"
        verdicts.setdefault(t["verdict"], []).append(label)
    return "served, " + "; ".join(f"{k}: {', '.join(v)}" for k, v in verdicts.items())


# ---------------------------------------------------------------------------------------------
# README


README = """\
# SparseCore (`TPUEmbeddingV2`) checkpoint fixtures

Checkpoints in the SparseCore format (stacked, padded, core-interleaved tables sliced per chip, a
`_sparse_core_table_layouts` proto beside them), built on the CPU by **real TensorFlow
{tf_version}** (Keras {keras_version}, numpy {np_version}) with TensorFlow's own stacking
function, layout proto and per-chip sharded saveable, as `../shared/design/SPARSECORE_FORMAT.md`
§12 describes, and what TensorFlow's `TPUEmbeddingForServing` restores from them. For issue 11;
the tests read them without TensorFlow. Generated by `tools/make_sparsecore_fixtures.py`: do not
edit by hand.

## Regenerating

From the repository root, in the TensorFlow venv (never embserve's `.venv`):

```sh
python3 -m venv .venvs/tf && .venvs/tf/bin/pip install tensorflow-cpu==2.21.0 google-crc32c  # once
.venvs/tf/bin/python tools/make_sparsecore_fixtures.py
```

The script rewrites this directory and exits non-zero if a self-check fails: TF's stacking
function must give the layouts of the spec's §2 rules; TF's `unshuffle_from_sc_to_cpu` +
`remove_padding_from_sc` must give back every packed table and slot; ForServing must restore
every table of every valid fixture bit-exactly. Output is deterministic (values are a function
of table, row and column; seeded ids and weights; `PYTHONHASHSEED=0`).

How each checkpoint is made: layouts from
`tpu_embedding_v3._stack_tables_with_same_table_dim_and_optimizer` on cloned configs (every
feature has `output_shape=[16]`, `[32]` for `stacked_2x4`), serialized as
`TPUEmbeddingV2._track_restore_info_for_cpu` does (table-name order); each stack and each
`<stack>/<slot>` is an object whose saveable is one `TPUEmbeddingShardedSaveable` per chip
(so the bundle holds one row slice per chip); the `_variables` dict and the layouts trackable
are tracked in `TPUEmbeddingV2`'s order. What a CPU build cannot show: bytes from a real TPU
job (multi-host files, real padding contents).

Values: row `r`, column `c` of the `i`-th table (in `table_order`) holds `1000·(i+1) + r + c/16`;
slot `j` adds `(j+1)·100000` (exact in float32, so a wrong value names its table, row, column and
slot). **Padding rows hold 1e30 and padding columns NaN**, in parameter and slot stacks: a reader
that serves padding produces them. Serving configs initialize tables with
`RowIdInitializer(offset={init_offset})`, so a table TensorFlow did not restore reads
`{init_offset} + row`.

## Valid fixtures

| directory | what | chips x SC | stacks (rows x width) | bytes |
| --- | --- | --- | --- | --- |
{fixture_rows}

After a correct restore (before `build()`), TF's load status answers, for every valid fixture:
{status_lines}

`resaved/` is the ForServing object that restored `one_chip_adam`, saved again. TF 2.21 cannot
restore it. {resaved}

## Mismatch and damage cases (`mismatch/`)

`mismatch/base/` is a good checkpoint ({base_desc}). Every other directory is `base` with one
defect. `mismatch/expected.json` lists the cases: checkpoint, serving config, what TF 2.21 did,
what embserve must do.

| case | checkpoint | what TF 2.21 does | embserve must |
| --- | --- | --- | --- |
{mismatch_rows}

Verdicts on what TF served: "correct" = the checkpoint's table, bit for bit; "initializer" =
TF kept the config's initializer values (it restored nothing into the table and said nothing);
"wrong values" = the table's true shape filled with other rows or columns; "wrong shape" = a
shape that is neither the config's nor the checkpoint's table.

## `expected.json` of a valid fixture

| key | content |
| --- | --- |
{schema_rows}

`mismatch/expected.json`: `base` (layouts, true tables), `checkpoints[]` (`directory`,
`description`), `cases[]`: `name`, `description`, `checkpoint` (prefix relative to `mismatch/`),
`order` (`restore_then_build` or `build_then_restore`), `experimental_sparsecore_restore_info`,
`serving` (as above), `tf` (`outcome` `error` with `stage`, `tf_class`, `tf_builtin_bases`,
`message`; or `served` with `tables.<name>` = `verdict`, `config_shape`, `dtype`, `shape`,
`sha256` and, for "wrong values" / "wrong shape", `data_hex`; `dense_lookup_ids_0_1`: TF's
output for ids [0, 1] of every feature; `restore_status`), `table_order` (for the value rule),
`embserve_expected` (`raises` + `message_names` the message must contain + `object_unchanged`,
or `serves`: `correct` / `subset`; `note` where a choice was made).

## Self-checks of the last run

{checks}

Total size (this README aside): {total} bytes.
"""


SCHEMA = [  # rows of the README's table describing a valid fixture's expected.json
    ("`meta`, `name`, `description`, `notes`", "generator and versions; what the fixture is"),
    (
        "`checkpoint`, `latest_checkpoint`",
        "the prefix (relative to the directory); what `tf.train.latest_checkpoint(dir)` answers",
    ),
    (
        "`embedding_path`",
        "P, the object path of the embedding (`embedding`, or the Keras layer path)",
    ),
    ("`layouts_key`", "`P/_sparse_core_table_layouts/.ATTRIBUTES/VARIABLE_VALUE`"),
    (
        "`topology`",
        "`num_partitions` (chips), `sparse_cores_per_chip`, `num_sparse_cores` (N), "
        "`disable_table_stacking`, `feature_output_shape_when_stacking`",
    ),
    ("`layouts.serialized_hex`", "the stored proto bytes"),
    (
        "`layouts.tables`",
        "each `SparseCoreTableLayout` in stored order, all 12 fields by name "
        "(`unsharded_shape` / `unsharded_padded_shape` as lists; absent fields as defaults)",
    ),
    (
        "`layouts.stacker_emit_order`, `layouts.stored_order`",
        "table order of the C++ stacker's `GetLayouts()`, and in the stored proto",
    ),
    (
        "`stacks.<stack>`",
        "`key`, `shape` [T·N, W], `tables` (in the stack, in order), `chip_slices` (the slice "
        "spec of each chip's saveable, e.g. `256 16 0,128:0,16`), `slots.<slot>` with `key`, "
        "`shape`, `chip_slices`",
    ),
    ("`padding`", "sentinel bytes (hex, little-endian float32) of padding rows and columns"),
    ("`table_order`, `value_rule`", "how the values were made"),
    (
        "`serving`",
        "the serving config: `tables` (by name: `name`, `vocabulary_size`, `dim`, "
        '`combiner`, `initializer` `{"type": "rowid", "offset": 9000}`, `optimizer` '
        '`{"type": "optimizer", "class", "kwargs", "slot_names"}`), '
        '`feature_config` (the `{"type": "dict", "items": [[name, feature leaf]]}` '
        "structure of `tools/make_fixtures.py`), `optimizer` (given to the constructor)",
    ),
    ("`stored.list_variables`", "`tf.train.list_variables`: `name`, `shape`, `dtype` per key"),
    (
        "`stored.tensors.<key>`",
        "`tf.train.load_checkpoint` per key: `dtype`, `shape`, `sha256` and `nbytes` of the "
        "little-endian C-order bytes (slices joined), `data_hex` when at most 1024 bytes, "
        "`strings_hex` for strings",
    ),
    ("`stored.data_files`", "the `.data-*` file names"),
    (
        "`restored.<table>`",
        "ForServing's `embedding_tables` after the restore: `dtype`, `shape` [R, D], "
        "`data_hex`, `sha256`",
    ),
    (
        "`for_serving_variables.<table>`",
        "the keys of TF's `variables[table]` (only `parameters` for stacked tables)",
    ),
    (
        "`slots.<table>.<slot>`",
        "`dtype`, `shape`, `sha256` of the slot, unstacked by TF's own functions from the "
        "stored slot stack (ForServing restores none; the values follow `value_rule`)",
    ),
    (
        "`restore_status`",
        "what `assert_consumed`, `assert_existing_objects_matched`, `assert_nontrivial_match` did",
    ),
    (
        "`lookups[]`",
        "`name` (`dense_1d`, `dense_2d`, `ragged`, `ragged_weighted`, `sparse`, "
        "`sparse_weighted`), `features` / `weights` (leaves of `tools/make_fixtures.py`: "
        "`dense` with `shape` + flat `values`, `ragged` with `values` + `nested_row_splits`, "
        "`sparse` with `indices`, `values`, `dense_shape`; `weights` null when unweighted), "
        "`outputs.<feature>`: TF ForServing's `__call__` result as the `array` leaf (`dtype`, "
        "`shape`, flat `values` that round-trip float32 exactly)",
    ),
]


def readme() -> None:
    rows = "\n".join(
        f"| `{f['name']}/` | {f['description']} | {f['topology']} | {f['stacks']} | {f['bytes']} |"
        for f in FIXTURES
    )
    statuses: dict[str, set[str]] = {}
    for f in FIXTURES:
        if f["name"] != "resaved":
            for k, v in f["status"].items():
                statuses.setdefault(k, set()).add(re.sub(r"\d+", "<n>", v))
    status_lines = "\n".join(f"- `{k}`: {' / '.join(sorted(v))}" for k, v in statuses.items())
    status_lines += (
        "\n\n(`<n>` = the number of tables restored through the layouts: the "
        "per-table variables ForServing creates for them are in the checkpoint "
        "under no path.)"
    )
    resaved = next(f for f in FIXTURES if f["name"] == "resaved")["status"]
    mrows = []
    for r in MISMATCH:
        exp = r["embserve_expected"] or {}
        if "raises" in exp:
            must = f"raise `{exp['raises']}` naming " + ", ".join(
                f"`{n}`" for n in exp["message_names"]
            )
        else:
            must = {
                "correct": "serve the checkpoint's tables",
                "subset": "serve the asked-for tables",
            }[exp["serves"]]
        if exp.get("note"):
            must += f" ({exp['note']})"
        mrows.append(f"| `{r['name']}` | `{r['checkpoint']}` | {summary(r['tf'])} | {must} |")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file() and p.name != "README.md")
    import keras

    text = README.format(
        tf_version=tf.__version__,
        keras_version=keras.__version__,
        np_version=np.__version__,
        init_offset=INIT_OFFSET,
        fixture_rows=rows,
        status_lines=status_lines,
        resaved=" ".join(f"With {k}: {v.rstrip('.')}." for k, v in resaved.items()),
        base_desc=spec_mismatch_base().description,
        mismatch_rows="\n".join(mrows),
        hex_limit=HEX_LIMIT,
        checks="\n".join(f"- {s}: {line}" for s, line in CHECKS),
        total=total,
        schema_rows="\n".join(f"| {k} | {v} |" for k, v in SCHEMA),
    )
    (OUT / "README.md").write_text(text)


def main() -> int:
    if tf.__version__ != TF_VERSION:
        print(f"need TensorFlow {TF_VERSION}, found {tf.__version__}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        make_all_valid()
        make_resaved()
        make_mismatch()
    except Exception:
        traceback.print_exc()
        return 1
    readme()
    for status, line in CHECKS:
        print(f"{status}: {line}")
    print(f"fixtures: {dir_size(OUT)} bytes in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
