"""Write ``tests/data/*.json``: ground-truth fixtures produced by REAL TensorFlow 2.21.

This script runs ONLY in the separate TensorFlow venv, never in embserve's dev venv (embserve
never depends on TensorFlow). Create that venv once, then run the script from the repository
root::

    python3 -m venv .venvs/tf && .venvs/tf/bin/pip install tensorflow-cpu==2.21.0
    .venvs/tf/bin/python tools/make_fixtures.py        # or: make fixtures

Why: ``tests/test_tf_fixtures.py`` must check embserve against what TensorFlow really does, on
machines without TensorFlow. So every case is defined here *declaratively* (plain JSON-ready
data), serialised, then **decoded back from that JSON** and run through
``tf.tpu.experimental.embedding``; the result (outputs or the error) is stored next to the case.
Because TensorFlow only ever sees what the JSON says, the test can rebuild exactly the same
situation with embserve objects.

Files written (see ``tests/data/README.md`` for the schema):

- ``lookup_cases.json``: lookups through ``TPUEmbeddingForServing.__call__`` /
  ``embedding_lookup`` and ``serving_embedding_lookup`` (SEMANTICS.md §0, §3, §4, §5).
- ``embedding_cases.json``: ``TPUEmbeddingForServing`` construction and build: table naming and
  order, optimizer filling and checks, slots, ``embedding_tables`` and ``variables`` (§2).
- ``config_cases.json``: constructors of ``TableConfig``, ``FeatureConfig``, the optimizers,
  ``QuantizationConfig``, ``RowIdInitializer``; optimizer equality and hashing (§1).

Each case may also carry what SEMANTICS.md predicts (``spec``); it is compared with TensorFlow's
actual behaviour here and every disagreement is printed and stored in the case as
``semantics_mismatch`` (the spec itself is not written: the fixture is the truth).

Output is deterministic: fixed seeds, sorted keys, one case per line, float32 values written as
their shortest round-tripping decimal (``"nan"``, ``"inf"``, ``"-inf"`` as strings), memory
addresses scrubbed from messages.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

E = tf.tpu.experimental.embedding
TF_VERSION = "2.21.0"
DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"

Json = Any
OMIT = object()  # "argument not passed" marker in case definitions


# --------------------------------------------------------------------------------------------
# JSON encoding of numbers and arrays
# --------------------------------------------------------------------------------------------


def enc_float(x: float) -> float | str:
    """Encode one float32 value: shortest decimal that round-trips, or "nan" / "inf" / "-inf"."""
    x32 = np.float32(x)
    if np.isnan(x32):
        return "nan"
    if np.isinf(x32):
        return "inf" if x32 > 0 else "-inf"
    out = float(str(x32))
    assert np.float32(out) == x32, (x, out)
    return out


def enc_float64(x: float) -> float | str:
    """Encode one float64 value (repr round-trips in Python)."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def dec_number(v: float | int | str) -> float | int:
    """Decode one encoded number (the inverse of :func:`enc_float`)."""
    return float(v) if isinstance(v, str) else v


def enc_values(a: np.ndarray) -> list[Json]:
    """Flatten an array to JSON numbers (ints stay ints, floats round-trip in their dtype)."""
    flat = np.asarray(a).reshape(-1)
    if flat.dtype.kind in "iub":
        return [int(v) for v in flat]
    if flat.dtype == np.float64:
        return [enc_float64(float(v)) for v in flat]
    return [enc_float(float(v)) for v in flat]


def enc_array(a: np.ndarray) -> Json:
    """An output array leaf: dtype, shape and flat values."""
    a = np.asarray(a)
    return {"type": "array", "dtype": a.dtype.name, "shape": list(a.shape), "values": enc_values(a)}


def dec_array(d: Json) -> np.ndarray:
    """Decode an ``array``/``dense`` leaf into a numpy array of its dtype and shape."""
    vals = [dec_number(v) for v in d["values"]]
    return np.array(vals, dtype=d["dtype"]).reshape(d["shape"])


# --------------------------------------------------------------------------------------------
# Case-definition helpers (produce JSON-ready leaves; containers are plain Python containers)
# --------------------------------------------------------------------------------------------


class Leaf:
    """A JSON leaf in a case definition, so Python dict containers are not mistaken for leaves."""

    def __init__(self, data: dict[str, Json]) -> None:
        self.data = data


def dense(values: Any, dtype: str = "int64") -> Leaf:
    """Dense ids (a ``tf.Tensor`` / numpy array) of any rank, from nested lists or a scalar."""
    a = np.array(values, dtype=dtype)
    return Leaf({"type": "dense", "dtype": dtype, "shape": list(a.shape), "values": enc_values(a)})


def dense_w(values: Any, dtype: str = "float32") -> Leaf:
    """A dense weight tensor (only ever an error for TensorFlow)."""
    return dense(values, dtype)


def sparse(
    indices: list[list[int]], values: list[Any], dense_shape: list[int], dtype: str = "int64"
) -> Leaf:
    """A SparseTensor: int64 indices, values of ``dtype``, dense_shape."""
    vals = np.array(values, dtype=dtype)
    return Leaf(
        {
            "type": "sparse",
            "indices": [list(map(int, i)) for i in indices],
            "values": enc_values(vals),
            "dtype": dtype,
            "dense_shape": list(dense_shape),
        }
    )


def sparse_w(
    indices: list[list[int]], values: list[Any], dense_shape: list[int], dtype: str = "float32"
) -> Leaf:
    """Sparse weights (float32 unless a dtype case)."""
    return sparse(indices, values, dense_shape, dtype)


def ragged(rows: list[list[Any]], dtype: str = "int64", splits_dtype: str = "int64") -> Leaf:
    """A rank-2 RaggedTensor from a list of rows."""
    splits = [0]
    for r in rows:
        splits.append(splits[-1] + len(r))
    values = [v for r in rows for v in r]
    return ragged_splits(values, [splits], dtype, splits_dtype)


def ragged_w(rows: list[list[Any]], dtype: str = "float32") -> Leaf:
    """Ragged weights from a list of rows."""
    return ragged(rows, dtype)


def ragged_splits(
    values: list[Any],
    nested_row_splits: list[list[int]],
    dtype: str = "int64",
    splits_dtype: str = "int64",
) -> Leaf:
    """A RaggedTensor from flat values and row splits, outermost first (rank = 1 + levels)."""
    vals = np.array(values, dtype=dtype)
    return Leaf(
        {
            "type": "ragged",
            "values": enc_values(vals),
            "dtype": dtype,
            "nested_row_splits": [list(map(int, s)) for s in nested_row_splits],
            "splits_dtype": splits_dtype,
        }
    )


def pyint(v: int) -> Leaf:
    """A Python int used as a leaf (TensorFlow rejects it as an input)."""
    return Leaf({"type": "pyint", "value": v})


def pystr(v: str) -> Leaf:
    """A Python str used as a leaf (e.g. a bad feature_config leaf)."""
    return Leaf({"type": "pystr", "value": v})


def table_leaf(ref: str) -> Leaf:
    """A TableConfig placed where a FeatureConfig is expected."""
    return Leaf({"type": "table_leaf", "table": ref})


UNSET = object()


def fc(
    table: str = "t",
    L: int = 0,  # noqa: N803 - L is the name SEMANTICS.md uses for max_sequence_length
    validate: bool = True,
    output_shape: Any = UNSET,
    name: str | None = None,
) -> Leaf:
    """A FeatureConfig leaf referring to a table of the case by its ref."""
    d: dict[str, Json] = {
        "type": "feature",
        "table": table,
        "max_sequence_length": L,
        "validate_weights_and_indices": validate,
        "name": name,
    }
    d["output_shape"] = None if output_shape is UNSET else output_shape
    return Leaf(d)


def _nested(obj: Any, leaf: Callable[[Any], Json]) -> Json:
    """Encode dict / list / tuple / namedtuple / None containers, tagged because JSON has only
    arrays and objects, turning every other value with ``leaf``. Dict items keep their order
    (TensorFlow sorts keys itself) and may have non-string keys."""
    if obj is None:
        return {"type": "none"}
    if isinstance(obj, dict):
        return {"type": "dict", "items": [[k, _nested(v, leaf)] for k, v in obj.items()]}
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
        return {
            "type": "namedtuple",
            "name": type(obj).__name__,
            "fields": list(cast(Any, obj)._fields),
            "items": [_nested(v, leaf) for v in obj],
        }
    if isinstance(obj, tuple):
        return {"type": "tuple", "items": [_nested(v, leaf) for v in obj]}
    if isinstance(obj, list):
        return {"type": "list", "items": [_nested(v, leaf) for v in obj]}
    return leaf(obj)


def _leaf_data(obj: Any) -> Json:
    if isinstance(obj, Leaf):
        return obj.data
    raise TypeError(f"cannot encode {obj!r}")


def struct(obj: Any) -> Json:
    """Encode a nested case structure whose leaves are :class:`Leaf` objects."""
    return _nested(obj, _leaf_data)


def rowid_table(
    combiner: str = "mean",
    vocab: int = 10,
    dim: int = 2,
    *,
    name: str | None = None,
    offset: float = 0,
    optimizer: Json = None,
    dtype: str | None = None,
    quantization: list[float] | None = None,
) -> dict[str, Json]:
    """A table initialised with ``RowIdInitializer(offset)``: row r is ``offset + r``."""
    t: dict[str, Json] = {
        "vocabulary_size": vocab,
        "dim": dim,
        "combiner": combiner,
        "name": name,
        "initializer": {"type": "rowid", "offset": offset},
        "optimizer": optimizer,
    }
    if dtype is not None:
        t["dtype"] = dtype
    if quantization is not None:
        t["quantization_config"] = quantization
    return t


def random_values(seed: int, shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0) -> Any:
    """Seeded uniform values rounded to 3 decimals, as float32 (readable in the JSON)."""
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(lo, hi, shape), 3).astype(np.float32)


def rand_table(
    seed: int,
    combiner: str = "mean",
    vocab: int = 8,
    dim: int = 3,
    *,
    name: str | None = None,
    optimizer: Json = None,
) -> dict[str, Json]:
    """A table whose values (seeded, stored in the JSON) come from an explicit initializer."""
    vals = random_values(seed, (vocab, dim))
    return {
        "vocabulary_size": vocab,
        "dim": dim,
        "combiner": combiner,
        "name": name,
        "initializer": {
            "type": "values",
            "dtype": "float32",
            "shape": [vocab, dim],
            "values": enc_values(vals),
        },
        "optimizer": optimizer,
    }


def opt(cls: str, **kwargs: Any) -> Json:
    """An optimizer spec: class name under tf.tpu.experimental.embedding and keyword args."""
    return {"type": "optimizer", "class": cls, "kwargs": kwargs}


def rnd_weights(seed: int, n: int) -> list[float]:
    """Seeded positive weights rounded to 2 decimals."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in np.round(rng.uniform(0.1, 2.0, n), 2)]


# --------------------------------------------------------------------------------------------
# Decoding JSON into TensorFlow objects
# --------------------------------------------------------------------------------------------

_NAMEDTUPLES: dict[tuple[str, tuple[str, ...]], type] = {}


def namedtuple_class(name: str, fields: list[str]) -> type:
    """One namedtuple class per (name, fields), so config, inputs and outputs share it."""
    key = (name, tuple(fields))
    if key not in _NAMEDTUPLES:
        _NAMEDTUPLES[key] = collections.namedtuple(name, fields)
    return _NAMEDTUPLES[key]


def decode_struct(d: Json, leaf: Callable[[Json], Any]) -> Any:
    """Rebuild a tagged structure, turning each leaf with ``leaf``."""
    t = d["type"]
    if t == "none":
        return None
    if t == "dict":
        return {k: decode_struct(v, leaf) for k, v in d["items"]}
    if t == "list":
        return [decode_struct(v, leaf) for v in d["items"]]
    if t == "tuple":
        return tuple(decode_struct(v, leaf) for v in d["items"])
    if t == "namedtuple":
        cls = namedtuple_class(d["name"], d["fields"])
        return cls(*[decode_struct(v, leaf) for v in d["items"]])
    return leaf(d)


def make_initializer(spec: Json) -> Any:
    """A TensorFlow table initializer from its JSON spec."""
    if spec is None:
        return None
    if spec["type"] == "rowid":
        return E.RowIdInitializer(offset=spec["offset"])
    if spec["type"] == "values":
        arr = dec_array(spec)

        def init(shape: Any, dtype: Any = None) -> Any:
            return arr.copy()

        return init
    if spec["type"] == "no_dtype_kwarg":

        def init_no_dtype(shape: Any) -> Any:
            return np.zeros(shape, np.float32)

        return init_no_dtype
    raise ValueError(spec)


def make_optimizer(spec: Json) -> Any:
    """A TensorFlow optimizer (or a bad stand-in) from its JSON spec."""
    if spec is None:
        return None
    if isinstance(spec, dict) and spec.get("type") == "optimizer":
        return getattr(E, spec["class"])(**spec["kwargs"])
    return spec  # a plain JSON value used as a (bad) optimizer, e.g. "sgd" or 3


def make_tables(specs: dict[str, Json]) -> dict[str, Any]:
    """TableConfig objects for a case, by ref."""
    out = {}
    for ref, s in specs.items():
        kwargs: dict[str, Any] = {
            "vocabulary_size": s["vocabulary_size"],
            "dim": s["dim"],
            "initializer": make_initializer(s["initializer"]),
            "optimizer": make_optimizer(s["optimizer"]),
            "combiner": s["combiner"],
            "name": s["name"],
        }
        if "dtype" in s:
            kwargs["dtype"] = tf.as_dtype(s["dtype"])
        if "quantization_config" in s:
            kwargs["quantization_config"] = E.QuantizationConfig(*s["quantization_config"])
        out[ref] = E.TableConfig(**kwargs)
    return out


def tf_feature_leaf(tables: dict[str, Any]) -> Callable[[Json], Any]:
    """Leaf decoder for feature_config structures."""

    def leaf(d: Json) -> Any:
        if d["type"] == "feature":
            return E.FeatureConfig(
                tables[d["table"]],
                max_sequence_length=d["max_sequence_length"],
                validate_weights_and_indices=d["validate_weights_and_indices"],
                output_shape=d["output_shape"],
                name=d["name"],
            )
        if d["type"] == "table_leaf":
            return tables[d["table"]]
        if d["type"] in ("pyint", "pystr"):
            return d["value"]
        raise ValueError(d)

    return leaf


def tf_input_leaf(d: Json) -> Any:
    """Leaf decoder for features and weights: tf.Tensor / SparseTensor / RaggedTensor."""
    t = d["type"]
    if t == "dense":
        return tf.constant(dec_array(d))
    if t == "sparse":
        vals = np.array([dec_number(v) for v in d["values"]], dtype=d["dtype"])
        idx = np.array(d["indices"], dtype=np.int64).reshape(-1, len(d["dense_shape"]))
        return tf.SparseTensor(idx, tf.constant(vals), d["dense_shape"])
    if t == "ragged":
        vals = np.array([dec_number(v) for v in d["values"]], dtype=d["dtype"])
        splits = [tf.constant(s, dtype=d["splits_dtype"]) for s in d["nested_row_splits"]]
        return tf.RaggedTensor.from_nested_row_splits(tf.constant(vals), splits)
    if t in ("pyint", "pystr"):
        return d["value"]
    raise ValueError(d)


def encode_output(out: Any) -> Json:
    """Encode TensorFlow's nested output (container types as TF returned them)."""
    return _nested(out, lambda x: enc_array(np.asarray(x)))


# --------------------------------------------------------------------------------------------
# Errors and logs
# --------------------------------------------------------------------------------------------

_ID_RANGE = re.compile(r"indices\[[\d,]+\] = (-?\d+) is not in \[0, (\d+)\)")
MAX_MESSAGE = 600  # characters kept of an error message (some TF messages print whole tables)


def scrub(msg: str) -> str:
    """Remove what varies between runs (memory addresses) from a message."""
    return re.sub(r"0x[0-9a-fA-F]+", "0x…", msg)


def encode_error(e: BaseException, stage: str | None = None) -> Json:
    """Class, built-in base classes, message and (for bad ids) the id and table size."""
    builtins_ = [
        c.__name__
        for c in type(e).__mro__
        if c.__module__ == "builtins" and c not in (BaseException, Exception, object)
    ]
    err: dict[str, Json] = {
        "tf_class": type(e).__name__,
        "tf_builtin_bases": builtins_,
        "message": scrub(str(e))[:MAX_MESSAGE],
    }
    m = _ID_RANGE.search(str(e))
    if isinstance(e, tf.errors.InvalidArgumentError) and m:
        err["category"] = "id_out_of_range"
        err["id"] = int(m.group(1))
        err["num_rows"] = int(m.group(2))
    if stage is not None:
        err["stage"] = stage
    return err


class LogCapture(logging.Handler):
    """Collects TensorFlow / absl warnings emitted while one case runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(scrub(record.getMessage()))


LOGS = LogCapture()
for _name in ("absl", "tensorflow"):
    logging.getLogger(_name).addHandler(LOGS)
    logging.getLogger(_name).propagate = False


# --------------------------------------------------------------------------------------------
# SEMANTICS.md predictions, compared with TensorFlow's actual result
# --------------------------------------------------------------------------------------------


def rid(values: Any) -> Json:
    """Spec in row-id shorthand: one number per looked-up vector (expanded over dim)."""
    return {"rowid": values}


def err(cls: str) -> Json:
    """Spec: TensorFlow raises this class."""
    return {"error": cls}


def shape_spec(shape: tuple[int, ...]) -> Json:
    """Spec: only the output shape is predicted."""
    return {"shape": list(shape)}


def flat_leaves(enc: Json) -> list[Json]:
    """Flatten an encoded output in tf.nest order (dict keys sorted)."""
    t = enc["type"]
    if t == "array":
        return [enc]
    if t == "none":
        return []
    if t == "dict":
        return [x for _, v in sorted(enc["items"], key=lambda kv: kv[0]) for x in flat_leaves(v)]
    return [x for v in enc["items"] for x in flat_leaves(v)]


def check_spec(spec: Json, expect: Json) -> str | None:
    """Describe how TensorFlow's result differs from SEMANTICS.md's prediction (None: agrees)."""
    if spec is None:
        return None
    if "error" in spec:
        if "error" not in expect:
            return f"SEMANTICS predicts {spec['error']}, TF returned a result"
        if expect["error"]["tf_class"] != spec["error"]:
            return f"SEMANTICS predicts {spec['error']}, TF raised {expect['error']['tf_class']}"
        return None
    if "error" in expect:
        e = expect["error"]
        return f"SEMANTICS predicts a result, TF raised {e['tf_class']}: {e['message'][:120]}"
    leaves = flat_leaves(expect["output"])
    if "shape" in spec:
        if [leaves[0]["shape"]] != [spec["shape"]]:
            return f"SEMANTICS predicts shape {spec['shape']}, TF gave {leaves[0]['shape']}"
        return None
    want = spec["rowid"]
    wants = want if isinstance(want, list) and want and isinstance(want[0], Spec) else [want]
    if len(wants) != len(leaves):
        return f"SEMANTICS predicts {len(wants)} outputs, TF gave {len(leaves)}"
    for w, got_enc in zip(wants, leaves, strict=True):
        got = dec_array(got_enc)
        w_arr = np.asarray(w.values if isinstance(w, Spec) else w, dtype=np.float64)
        w_full = np.repeat(w_arr[..., None], got.shape[-1] if got.ndim else 1, axis=-1)
        if w_full.shape != got.shape:
            return f"SEMANTICS predicts shape {list(w_full.shape)}, TF gave {list(got.shape)}"
        if not np.allclose(got, w_full, rtol=1e-4, atol=1e-4, equal_nan=True):
            return f"SEMANTICS predicts {w_arr.tolist()}, TF gave {got[..., 0].tolist()}"
    return None


class Spec:
    """One leaf of a multi-output row-id spec (in tf.nest flatten order)."""

    def __init__(self, values: Any) -> None:
        self.values = values


# --------------------------------------------------------------------------------------------
# Lookup cases
# --------------------------------------------------------------------------------------------

LOOKUP_CASES: list[dict[str, Json]] = []
_SPECS: dict[str, Json] = {}


def lookup(
    name: str,
    section: str,
    *,
    tables: dict[str, dict[str, Json]],
    config: Any,
    features: Any,
    weights: Any = OMIT,
    api: str = "embedding",
    call: str = "__call__",
    optimizer: Json = None,
    lookup_tables: dict[str, Any] | None = None,
    lookup_tables_key: str = "config",
    spec: Json = None,
    keywords: tuple[str, ...] = (),
    bad_feature: str | None = None,
    note: str | None = None,
) -> None:
    """Register a lookup case.

    Args:
        name: unique case id (used as the pytest id).
        section: the SEMANTICS.md section it exercises.
        tables: table specs by ref (``rowid_table`` / ``rand_table``).
        config: the feature_config structure (``fc`` leaves).
        features: the inputs structure.
        weights: the weights structure; ``None`` passes ``weights=None``; omitted: not passed.
        api: ``"embedding"`` (TPUEmbeddingForServing) or ``"serving_embedding_lookup"``.
        call: ``"__call__"`` or ``"embedding_lookup"`` (``api="embedding"`` only).
        optimizer: the global optimizer spec for TPUEmbeddingForServing.
        lookup_tables: for serving_embedding_lookup, table arrays by ref (refs may be missing).
        lookup_tables_key: ``"config"`` (keyed by TableConfig) or ``"name"`` (by table name).
        spec: what SEMANTICS.md predicts (``rid``/``err``/``shape_spec``), checked, not stored.
        keywords: words embserve's error message must contain (e.g. the feature path).
        bad_feature: for out-of-range ids, the path of the feature holding the bad id.
        note: free text for readers.
    """
    assert all(c["name"] != name for c in LOOKUP_CASES), name
    case: dict[str, Json] = {
        "name": name,
        "section": section,
        "tables": tables,
        "feature_config": struct(config),
        "features": struct(features),
        "api": api,
    }
    if weights is not OMIT:
        case["weights"] = struct(weights)
    if api == "embedding":
        case["call"] = call
        case["optimizer"] = optimizer
    else:
        assert lookup_tables is not None, name
        case["lookup_tables"] = {k: enc_array(np.asarray(v)) for k, v in lookup_tables.items()}
        case["lookup_tables_key"] = lookup_tables_key
    if keywords:
        case["embserve_keywords"] = list(keywords)
    if bad_feature is not None:
        case["bad_feature"] = bad_feature
    if note:
        case["note"] = note
    _SPECS[name] = spec
    LOOKUP_CASES.append(case)


def run_lookup(case: dict[str, Json]) -> Json:
    """Run one lookup case through TensorFlow, from its JSON form only."""
    tables = make_tables(case["tables"])
    LOGS.messages.clear()  # TableConfig(name=None) always warns; only the lookup's logs matter
    config = decode_struct(case["feature_config"], tf_feature_leaf(tables))
    features = decode_struct(case["features"], tf_input_leaf)
    has_w = "weights" in case
    weights = decode_struct(case["weights"], tf_input_leaf) if has_w else None
    try:
        if case["api"] == "embedding":
            emb = E.TPUEmbeddingForServing(config, make_optimizer(case["optimizer"]))
            fn = emb if case["call"] == "__call__" else emb.embedding_lookup
            out = fn(features, weights) if has_w else fn(features)
        else:
            by_ref = {
                ref: tf.Variable(dec_array(arr), name=f"v_{ref}")
                for ref, arr in case["lookup_tables"].items()
            }
            if case["lookup_tables_key"] == "config":
                tmap: dict[Any, Any] = {tables[r]: v for r, v in by_ref.items()}
            else:
                tmap = {tables[r].name: v for r, v in by_ref.items()}
            out = E.serving_embedding_lookup(features, weights, tmap, config)
    except Exception as e:
        return {"error": encode_error(e)}
    return {"output": encode_output(out)}


def define_lookup_cases() -> None:
    """Every lookup behaviour of SEMANTICS.md §0, §3, §4, §5."""
    T = {"t": rowid_table("sum")}  # noqa: N806
    TM = {"t": rowid_table("mean")}  # noqa: N806
    COMB = ("sum", "mean", "sqrtn")  # noqa: N806

    # ---------------- §4.1 dense ----------------
    lookup(
        "dense_rank0_scalar",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense(3)},
        spec=rid(3),
    )
    lookup(
        "dense_rank1_int32",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 2], "int32")},
        spec=rid([1, 2]),
    )
    lookup(
        "dense_rank1_int64",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 2], "int64")},
        spec=rid([1, 2]),
    )
    lookup(
        "dense_rank2_no_combine",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense([[1, 2]])},
        spec=rid([[1, 2]]),
    )
    lookup(
        "dense_rank3_random_table",
        "§4.1",
        tables={"r": rand_table(11)},
        config={"a": fc("r")},
        features={"a": dense([[[0, 1, 2], [3, 4, 5]], [[6, 7, 0], [7, 7, 7]]])},
    )
    lookup(
        "dense_rank4",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense([[[[1, 2]], [[3, 4]]]])},
        spec=rid([[[[1, 2]], [[3, 4]]]]),
    )
    lookup(
        "dense_empty_rank2",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense(np.zeros((0, 3), np.int64))},
        spec=shape_spec((0, 3, 2)),
    )
    lookup(
        "dense_empty_rank1",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense(np.zeros((0,), np.int32), "int32")},
        spec=shape_spec((0, 2)),
    )
    lookup(
        "dense_duplicates",
        "§4.1",
        tables=T,
        config={"a": fc()},
        features={"a": dense([5, 5, 0, 9])},
        spec=rid([5, 5, 0, 9]),
    )
    lookup(
        "dense_output_shape_ignored",
        "§4.1",
        tables=T,
        config={"a": fc(output_shape=[7])},
        features={"a": dense([1, 2])},
        spec=rid([1, 2]),
    )
    lookup(
        "dense_validate_false_ignored",
        "§4.1",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": dense([[4], [5]])},
        spec=rid([[4], [5]]),
    )
    for comb in COMB:
        lookup(
            f"dense_combiner_{comb}_ignored",
            "§4.1",
            tables={"r": rand_table(12, comb, vocab=5, dim=4)},
            config={"a": fc("r")},
            features={"a": dense([[0, 1, 2], [3, 4, 4]])},
        )
    lookup(
        "dense_sequence_feature_error",
        "§4.1",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": dense([1, 2])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "dense_weight_error",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 2])},
        weights={"a": dense_w([1.0, 1.0])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "dense_weight_none_leaf_ok",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 2])},
        weights={"a": None},
        spec=rid([1, 2]),
    )
    lookup(
        "dense_sequence_weight_none_ok",
        "§3.2",
        tables=T,
        config={"a": fc(), "s": fc(L=2)},
        features={"a": dense([1]), "s": sparse([[0, 1]], [4], [1, 3])},
        weights={"a": None, "s": None},
        spec=rid([Spec([1]), Spec([[0, 4]])]),
    )
    lookup(
        "dense_id_too_large",
        "§3.4",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 10])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "dense_id_negative",
        "§3.4",
        tables=T,
        config={"a": fc()},
        features={"a": dense([[-1, 2]], "int32")},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "dense_int64_id_2pow32_plus_1",
        "§3.3",
        tables={"t": rowid_table("sum", vocab=5)},
        config={"a": fc()},
        features={"a": dense([2**32 + 1])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "dense_int64_id_2pow31",
        "§3.3",
        tables={"t": rowid_table("sum", vocab=5)},
        config={"a": fc()},
        features={"a": dense([0, 2**31])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    for dt, vals in (("float32", [1.0, 2.0]), ("int16", [1, 2]), ("uint8", [1, 2])):
        lookup(
            f"dense_id_dtype_{dt}",
            "§3.3",
            tables=T,
            config={"a": fc()},
            features={"a": dense(vals, dt)},
            spec=err("InvalidArgumentError"),
        )

    # ---------------- §4.3 sparse, validated combining path ----------------
    ex_idx = [[0, 0], [0, 1], [2, 0]]
    ex_ids = [1, 3, 2]
    ex_w = [2.0, 0.5, 3.0]
    ex_spec = {
        ("sum", False): [4, 0, 2, 0], ("sum", True): [3.5, 0, 6, 0],
        ("mean", False): [2, 0, 2, 0], ("mean", True): [1.4, 0, 2, 0],
        ("sqrtn", False): [2.82843, 0, 2, 0], ("sqrtn", True): [1.69775, 0, 2, 0],
    }  # fmt: skip
    for comb in COMB:
        for weighted in (False, True):
            w = {"a": sparse_w(ex_idx, ex_w, [4, 2])} if weighted else OMIT
            lookup(
                f"sparse_valid_{comb}_{'weighted' if weighted else 'unweighted'}",
                "§4.3",
                tables={"t": rowid_table(comb)},
                config={"a": fc()},
                features={"a": sparse(ex_idx, ex_ids, [4, 2])},
                weights=w,
                spec=rid(ex_spec[(comb, weighted)]),
            )
        # Random table, random weights, random bags: real arithmetic.
        rng = np.random.default_rng(100 + COMB.index(comb))
        idx, ids = [], []
        for b in range(5):
            for j in range(int(rng.integers(0, 4))):
                idx.append([b, j])
                ids.append(int(rng.integers(0, 8)))
        lookup(
            f"sparse_valid_{comb}_random_weighted",
            "§4.3",
            tables={"r": rand_table(20 + COMB.index(comb), comb)},
            config={"a": fc("r")},
            features={"a": sparse(idx, ids, [5, 3])},
            weights={"a": sparse_w(idx, rnd_weights(30, len(ids)), [5, 3])},
        )
        lookup(
            f"sparse_valid_{comb}_random_unweighted",
            "§4.3",
            tables={"r": rand_table(20 + COMB.index(comb), comb)},
            config={"a": fc("r")},
            features={"a": sparse(idx, ids, [5, 3])},
        )
    # Invalid values (batch 3).
    inv_idx = [[0, 0], [0, 1], [2, 0]]
    for comb in COMB:
        lookup(
            f"sparse_valid_{comb}_negative_id_dropped",
            "§4.3",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": sparse(inv_idx, [-1, 3, 2], [3, 2])},
            spec=rid([3, 0, 2]),
        )
        lookup(
            f"sparse_valid_{comb}_weights_zero_negative",
            "§4.3",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": sparse(inv_idx, [1, 3, 2], [3, 2])},
            weights={"a": sparse_w(inv_idx, [0.0, 0.5, -3.0], [3, 2])},
            spec=rid({"sum": [1.5, 0, -6], "mean": [3, 0, 0], "sqrtn": [3, 0, 0]}[comb]),
        )
        lookup(
            f"sparse_valid_{comb}_weights_nan_inf",
            "§4.3/§4.5",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": sparse(inv_idx, [1, 3, 2], [3, 2])},
            weights={"a": sparse_w(inv_idx, [float("nan"), 1.0, float("inf")], [3, 2])},
            spec=rid(
                {
                    "sum": [float("nan"), 0, float("inf")],
                    "mean": [3, 0, float("nan")],
                    "sqrtn": [3, 0, float("nan")],
                }[comb]
            ),
        )
        lookup(
            f"sparse_valid_{comb}_weights_neg_inf",
            "§4.3/§4.5",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": sparse([[0, 0], [0, 1]], [1, 3], [1, 2])},
            weights={"a": sparse_w([[0, 0], [0, 1]], [1.0, float("-inf")], [1, 2])},
        )
        lookup(
            f"sparse_valid_{comb}_weight_sum_zero",
            "§4.3",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": sparse([[0, 0], [0, 1]], [1, 3], [1, 2])},
            weights={"a": sparse_w([[0, 0], [0, 1]], [1.0, -1.0], [1, 2])},
            spec=rid({"sum": [-2], "mean": [1], "sqrtn": [1]}[comb]),
        )
    lookup(
        "sparse_valid_mean_all_weights_dropped",
        "§4.3",
        tables=TM,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [1, 0]], [4, 5], [2, 2])},
        weights={"a": sparse_w([[0, 0], [1, 0]], [0.0, -1.0], [2, 2])},
        spec=rid([0, 0]),
    )
    lookup(
        "sparse_valid_empty_batch",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([], [], [0, 3])},
        spec=shape_spec((0, 2)),
    )
    lookup(
        "sparse_valid_no_entries",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([], [], [3, 5])},
        spec=rid([0, 0, 0]),
    )
    lookup(
        "sparse_valid_leading_empty_rows",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[2, 0], [3, 1]], [4, 5], [4, 2])},
        spec=rid([0, 0, 4, 5]),
    )
    lookup(
        "sparse_valid_middle_and_trailing_empty",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [2, 0]], [4, 5], [5, 2])},
        spec=rid([4, 0, 5, 0, 0]),
    )
    lookup(
        "sparse_valid_unsorted",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[2, 0], [0, 0], [1, 0]], [2, 0, 1], [3, 1])},
        spec=rid([0, 1, 2]),
    )
    lookup(
        "sparse_valid_unsorted_weighted_random",
        "§4.3",
        tables={"r": rand_table(23, "mean")},
        config={"a": fc("r")},
        features={"a": sparse([[1, 1], [0, 0], [1, 0], [0, 2]], [3, 5, 7, 1], [2, 3])},
        weights={"a": sparse_w([[1, 1], [0, 0], [1, 0], [0, 2]], [0.5, 1.5, 2.0, 0.25], [2, 3])},
    )
    lookup(
        "sparse_valid_columns_unordered",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 1], [0, 0]], [1, 3], [1, 2])},
        spec=rid([4]),
    )
    lookup(
        "sparse_valid_duplicate_indices",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [0, 0]], [1, 3], [1, 2])},
        spec=rid([4]),
    )
    lookup(
        "sparse_valid_duplicate_ids_mean",
        "§4",
        tables=TM,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [0, 1], [0, 2]], [1, 1, 1], [1, 3])},
        spec=rid([1]),
    )
    lookup(
        "sparse_valid_duplicate_ids_sqrtn",
        "§4",
        tables={"t": rowid_table("sqrtn")},
        config={"a": fc()},
        features={"a": sparse([[0, 0], [0, 1], [0, 2]], [1, 1, 3], [1, 3])},
        spec=rid([2.88675]),
    )
    lookup(
        "sparse_valid_row_beyond_dense_shape",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[5, 0]], [1], [3, 2])},
        spec=err("InvalidArgumentError"),
    )
    lookup(
        "sparse_valid_column_beyond_dense_shape",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [0, 7]], [1, 2], [2, 2])},
        spec=rid([3, 0]),
    )
    lookup(
        "sparse_valid_id_too_large",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [1, 0]], [1, 10], [2, 1])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "sparse_valid_int64_id_2pow32_plus_1",
        "§3.3",
        tables={"t": rowid_table("sum", vocab=5)},
        config={"a": fc()},
        features={"a": sparse([[0, 0]], [2**32 + 1], [1, 1])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "sparse_valid_int32_ids",
        "§3.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse(ex_idx, ex_ids, [4, 2], "int32")},
        spec=rid([4, 0, 2, 0]),
    )
    for dt, vals in (("float32", [1.0, 2.0]), ("int16", [1, 2]), ("uint8", [1, 2])):
        lookup(
            f"sparse_valid_id_dtype_{dt}",
            "§3.3",
            tables=T,
            config={"a": fc()},
            features={"a": sparse([[0, 0], [1, 0]], vals, [2, 1], dt)},
            spec=err("InvalidArgumentError"),
        )
    for dt in ("float64", "float16", "int32"):
        lookup(
            f"sparse_valid_weight_dtype_{dt}",
            "§4.3",
            tables=T,
            config={"a": fc()},
            features={"a": sparse([[0, 0]], [3], [1, 1])},
            weights={"a": sparse_w([[0, 0]], [2], [1, 1], dt)},
            spec=err("ValueError"),
        )
    lookup(
        "sparse_valid_weight_indices_ignored",
        "§4.8",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [1, 0]], [3, 4], [2, 1])},
        weights={"a": sparse_w([[0, 3], [7, 1]], [2.0, 5.0], [9, 9])},
        spec=rid([6, 20]),
    )
    lookup(
        "sparse_valid_weight_count_mismatch",
        "§4.8",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [1, 0]], [3, 4], [2, 1])},
        weights={"a": sparse_w([[0, 0]], [2.0], [2, 1])},
        spec=err("ValueError"),
    )
    lookup(
        "sparse_valid_output_shape_ignored",
        "§4.2",
        tables=T,
        config={"a": fc(output_shape=[7])},
        features={"a": sparse([[0, 0], [1, 0]], [3, 4], [2, 2])},
        spec=rid([3, 4]),
    )
    lookup(
        "sparse_rank1_validated_one_bag",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0], [2]], [1, 3], [4])},
        spec=rid(4),
    )
    lookup(
        "sparse_rank1_validated_mean_weighted",
        "§4.3",
        tables=TM,
        config={"a": fc()},
        features={"a": sparse([[0], [2]], [1, 3], [4])},
        weights={"a": sparse_w([[0], [2]], [1.0, 3.0], [4])},
        spec=rid(2.5),
    )
    r3_idx = [[0, 0, 0], [0, 0, 1], [1, 1, 0]]
    lookup(
        "sparse_rank3_sum",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse(r3_idx, [1, 2, 3], [2, 2, 3])},
        spec=rid([[3, 0], [0, 3]]),
    )
    lookup(
        "sparse_rank3_mean_weighted",
        "§4.3",
        tables=TM,
        config={"a": fc()},
        features={"a": sparse(r3_idx, [1, 2, 3], [2, 2, 3])},
        weights={"a": sparse_w(r3_idx, [1.0, 3.0, 2.0], [2, 2, 3])},
        spec=rid([[1.75, 0], [0, 3]]),
    )
    lookup(
        "sparse_rank3_validate_false_uses_safe_path",
        "§4.2",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0, 0], [0, 1, 0]], [-1, 3], [1, 3, 2])},
        spec=rid([[0, 3, 0]]),
        note="negative id dropped: rank >= 3 is always the safe path",
    )
    lookup(
        "sparse_rank3_random_sqrtn_weighted",
        "§4.3",
        tables={"r": rand_table(24, "sqrtn", vocab=6, dim=2)},
        config={"a": fc("r")},
        features={
            "a": sparse([[0, 0, 0], [0, 0, 2], [1, 2, 1], [1, 2, 0]], [5, 0, 2, 2], [2, 3, 4])
        },
        weights={
            "a": sparse_w(
                [[0, 0, 0], [0, 0, 2], [1, 2, 1], [1, 2, 0]], [0.3, 1.7, 0.9, 1.1], [2, 3, 4]
            )
        },
    )
    lookup(
        "sparse_rank4_validate_false_uses_safe_path",
        "§4.2",
        tables=TM,
        config={"a": fc(validate=False)},
        features={
            "a": sparse([[0, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]], [4, -2, 6], [2, 2, 2, 2])
        },
        spec=rid([[[0, 4], [0, 0]], [[0, 0], [6, 0]]]),
    )
    lookup(
        "sparse_rank4",
        "§4.3",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1]], [1, 2, 6], [1, 2, 1, 2])},
        spec=rid([[[3], [6]]]),
    )

    # ---------------- §4.4 sparse, plain combining path ----------------
    plain_spec = {
        ("sum", False): [4, 0, 2], ("sum", True): [3.5, 0, 6],
        ("mean", False): [2, 0, 2], ("mean", True): [1.4, 0, 2],
        ("sqrtn", False): [2.82843, 0, 2], ("sqrtn", True): [1.69775, 0, 2],
    }  # fmt: skip
    for comb in COMB:
        for weighted in (False, True):
            w = {"a": sparse_w(ex_idx, ex_w, [4, 2])} if weighted else OMIT
            lookup(
                f"sparse_plain_{comb}_{'weighted' if weighted else 'unweighted'}",
                "§4.4",
                tables={"t": rowid_table(comb)},
                config={"a": fc(validate=False)},
                features={"a": sparse(ex_idx, ex_ids, [4, 2])},
                weights=w,
                spec=rid(plain_spec[(comb, weighted)]),
                note="trailing empty row 3 vanishes",
            )
        rng = np.random.default_rng(200 + COMB.index(comb))
        idx, ids = [], []
        for b in range(5):
            for j in range(int(rng.integers(1, 4))):
                idx.append([b, j])
                ids.append(int(rng.integers(0, 8)))
        lookup(
            f"sparse_plain_{comb}_random_weighted",
            "§4.4",
            tables={"r": rand_table(40 + COMB.index(comb), comb)},
            config={"a": fc("r", validate=False)},
            features={"a": sparse(idx, ids, [5, 3])},
            weights={"a": sparse_w(idx, rnd_weights(50, len(ids)), [5, 3])},
        )
        lookup(
            f"sparse_plain_{comb}_weights_zero_negative",
            "§4.4",
            tables={"t": rowid_table(comb)},
            config={"a": fc(validate=False)},
            features={"a": sparse(inv_idx, [1, 3, 2], [3, 2])},
            weights={"a": sparse_w(inv_idx, [0.0, 0.5, -3.0], [3, 2])},
            spec=rid({"sum": [1.5, 0, -6], "mean": [3, 0, 2], "sqrtn": [3, 0, -2]}[comb]),
        )
        lookup(
            f"sparse_plain_{comb}_weights_nan_inf",
            "§4.4/§4.5",
            tables={"t": rowid_table(comb)},
            config={"a": fc(validate=False)},
            features={"a": sparse(inv_idx, [1, 3, 2], [3, 2])},
            weights={"a": sparse_w(inv_idx, [float("nan"), 1.0, float("inf")], [3, 2])},
            spec=rid(
                {
                    "sum": [float("nan"), 0, float("inf")],
                    "mean": [float("nan"), 0, float("nan")],
                    "sqrtn": [float("nan"), 0, float("nan")],
                }[comb]
            ),
        )
        lookup(
            f"sparse_plain_{comb}_weight_sum_zero",
            "§4.4",
            tables={"t": rowid_table(comb)},
            config={"a": fc(validate=False)},
            features={"a": sparse([[0, 0], [0, 1]], [1, 3], [1, 2])},
            weights={"a": sparse_w([[0, 0], [0, 1]], [1.0, -1.0], [1, 2])},
            spec=rid({"sum": [-2], "mean": [0], "sqrtn": [-1.41421]}[comb]),
        )
    lookup(
        "sparse_plain_no_entries",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([], [], [3, 5])},
        spec=shape_spec((0, 2)),
    )
    lookup(
        "sparse_plain_empty_batch",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([], [], [0, 3])},
        spec=shape_spec((0, 2)),
    )
    lookup(
        "sparse_plain_leading_empty_rows",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[2, 0], [3, 1]], [4, 5], [5, 2])},
        spec=rid([0, 0, 4, 5]),
    )
    lookup(
        "sparse_plain_row_beyond_dense_shape_extends",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [5, 0]], [1, 2], [3, 2])},
        spec=rid([1, 0, 0, 0, 0, 2]),
    )
    lookup(
        "sparse_plain_column_beyond_dense_shape",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [0, 9]], [1, 2], [1, 2])},
        spec=rid([3]),
    )
    lookup(
        "sparse_plain_unsorted_rows_error",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[1, 0], [0, 0]], [1, 2], [2, 1])},
        spec=err("InvalidArgumentError"),
    )
    lookup(
        "sparse_plain_columns_unordered",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 1], [0, 0], [1, 0]], [1, 3, 5], [2, 2])},
        spec=rid([4, 5]),
    )
    lookup(
        "sparse_plain_duplicate_indices",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [0, 0]], [1, 3], [1, 2])},
        spec=rid([4]),
    )
    lookup(
        "sparse_plain_negative_id_error",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [0, 1]], [-1, 3], [1, 2])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "sparse_plain_id_too_large",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [0, 1]], [2, 12], [1, 2])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    for dt in ("float64", "float16", "int32"):
        lookup(
            f"sparse_plain_weight_dtype_{dt}_cast",
            "§4.4",
            tables=T,
            config={"a": fc(validate=False)},
            features={"a": sparse([[0, 0]], [3], [1, 1])},
            weights={"a": sparse_w([[0, 0]], [2], [1, 1], dt)},
            spec=rid([6]),
        )
    for dt, vals in (("float32", [1.0, 2.0]), ("int16", [1, 2]), ("uint8", [1, 2])):
        lookup(
            f"sparse_plain_id_dtype_{dt}",
            "§3.3",
            tables=T,
            config={"a": fc(validate=False)},
            features={"a": sparse([[0, 0], [1, 0]], vals, [2, 1], dt)},
            spec=err("InvalidArgumentError"),
        )
    lookup(
        "sparse_plain_int32_ids",
        "§3.3",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse(ex_idx, ex_ids, [4, 2], "int32")},
        spec=rid([4, 0, 2]),
    )
    lookup(
        "sparse_plain_weight_count_mismatch",
        "§4.8",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [1, 0]], [3, 4], [2, 1])},
        weights={"a": sparse_w([[0, 0]], [2.0], [2, 1])},
        spec=err("ValueError"),
    )
    lookup(
        "sparse_plain_weight_indices_ignored",
        "§4.8",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [1, 0]], [3, 4], [2, 1])},
        weights={"a": sparse_w([[1, 3], [4, 1]], [2.0, 5.0], [6, 6])},
        spec=rid([6, 20]),
    )
    lookup(
        "sparse_rank1_plain_each_position_a_bag",
        "§4.4",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0], [2]], [1, 3], [4])},
        spec=rid([1, 0, 3]),
    )

    # ---------------- §4.6 sparse sequence ----------------
    seq_idx = [[0, 0], [0, 1], [0, 2], [2, 1]]
    seq_ids = [1, 2, 3, 4]
    seq_spec = {1: [[1], [0], [0]], 2: [[1, 2], [0, 0], [0, 4]],
                4: [[1, 2, 3, 0], [0, 0, 0, 0], [0, 4, 0, 0]]}  # fmt: skip
    for L in (1, 2, 4):  # noqa: N806
        lookup(
            f"sparse_seq_L{L}",
            "§4.6",
            tables=T,
            config={"a": fc(L=L)},
            features={"a": sparse(seq_idx, seq_ids, [3, 5])},
            spec=rid(seq_spec[L]),
        )
    lookup(
        "sparse_seq_random_table",
        "§4.6",
        tables={"r": rand_table(25, vocab=6, dim=3)},
        config={"a": fc("r", L=3)},
        features={"a": sparse([[0, 2], [1, 0], [1, 1], [3, 0]], [5, 0, 4, 1], [4, 6])},
    )
    lookup(
        "sparse_seq_bad_id_beyond_window_ignored",
        "§3.4",
        tables=T,
        config={"a": fc(L=1)},
        features={"a": sparse([[0, 0], [0, 1]], [1, 10], [1, 2])},
        spec=rid([[1]]),
    )
    lookup(
        "sparse_seq_negative_id_beyond_window_ignored",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0], [0, 3]], [1, -4], [1, 5])},
        spec=rid([[1, 0]]),
    )
    lookup(
        "sparse_seq_bad_id_in_window",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0], [0, 1]], [1, 10], [1, 2])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "sparse_seq_negative_id_in_window",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0]], [-1], [1, 2])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "sparse_seq_duplicates_added",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0], [0, 0]], [1, 3], [1, 2])},
        spec=rid([[4, 0]]),
    )
    lookup(
        "sparse_seq_unsorted",
        "§4.6",
        tables=T,
        config={"a": fc(L=3)},
        features={"a": sparse([[1, 2], [0, 1], [1, 0]], [7, 5, 6], [2, 3])},
        spec=rid([[0, 5, 0], [6, 0, 7]]),
    )
    lookup(
        "sparse_seq_empty_batch",
        "§4.6",
        tables=T,
        config={"a": fc(L=3)},
        features={"a": sparse([], [], [0, 4])},
        spec=shape_spec((0, 3, 2)),
    )
    lookup(
        "sparse_seq_row_beyond_dense_shape_dropped",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0], [4, 0]], [1, 2], [2, 2])},
        spec=rid([[1, 0], [0, 0]]),
    )
    lookup(
        "sparse_seq_validate_false_ignored",
        "§4.6",
        tables=T,
        config={"a": fc(L=2, validate=False)},
        features={"a": sparse(seq_idx, seq_ids, [3, 5])},
        spec=rid(seq_spec[2]),
    )
    lookup(
        "sparse_seq_L_beyond_dense_columns",
        "§4.6",
        tables=T,
        config={"a": fc(L=6)},
        features={"a": sparse([[0, 1], [0, 3], [1, 0]], [5, 6, 7], [2, 4])},
        spec=rid([[0, 5, 0, 6, 0, 0], [7, 0, 0, 0, 0, 0]]),
    )
    lookup(
        "sparse_seq_column_beyond_dense_shape",
        "§4.6",
        tables=T,
        config={"a": fc(L=6)},
        features={"a": sparse([[0, 1], [0, 4]], [5, 6], [1, 3])},
        note="column 4 >= dense_shape[1] = 3 but < L = 6",
    )
    lookup(
        "sparse_seq_column_beyond_dense_shape_and_L",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 1], [0, 4]], [5, 6], [1, 3])},
        spec=rid([[0, 5]]),
    )
    lookup(
        "sparse_seq_weight_error",
        "§3.2",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0]], [1], [1, 2])},
        weights={"a": sparse_w([[0, 0]], [1.0], [1, 2])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "sparse_seq_rank3_combines",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0, 0], [0, 1, 0]], [1, 2], [1, 2, 2])},
        spec=rid([[1, 2]]),
    )
    lookup(
        "sparse_seq_rank3_weight_error",
        "§3.2",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0, 0]], [1], [1, 2, 2])},
        weights={"a": sparse_w([[0, 0, 0]], [1.0], [1, 2, 2])},
        spec=err("ValueError"),
    )
    lookup(
        "sparse_seq_output_shape_set_combines_validated",
        "§4.6",
        tables=T,
        config={"a": fc(L=2, output_shape=[3])},
        features={"a": sparse(seq_idx, seq_ids, [3, 5])},
        spec=rid([6, 0, 4]),
    )
    lookup(
        "sparse_seq_output_shape_empty_combines",
        "§4.6",
        tables=T,
        config={"a": fc(L=2, output_shape=[])},
        features={"a": sparse(seq_idx, seq_ids, [3, 5])},
        spec=rid([6, 0, 4]),
    )
    lookup(
        "sparse_seq_output_shape_set_combines_plain",
        "§4.6",
        tables=T,
        config={"a": fc(L=2, output_shape=[3], validate=False)},
        features={"a": sparse([[0, 0], [1, 1]], [1, 2], [3, 5])},
        spec=rid([1, 2]),
    )
    lookup(
        "sparse_seq_int32_ids",
        "§4.6",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 1]], [7], [1, 4], "int32")},
        spec=rid([[0, 7]]),
    )
    for dt, v in (("float32", 7.0), ("int16", 7), ("uint8", 7)):
        lookup(
            f"sparse_seq_id_dtype_{dt}",
            "§3.3",
            tables=T,
            config={"a": fc(L=2)},
            features={"a": sparse([[0, 1]], [v], [1, 4], dt)},
            spec=err("InvalidArgumentError"),
        )
    lookup(
        "ragged_seq_id_dtype_int16",
        "§3.3",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": ragged([[7]], "int16")},
        spec=err("ValueError"),
    )
    lookup(
        "sparse_seq_int64_id_2pow32_plus_1",
        "§3.3",
        tables={"t": rowid_table("sum", vocab=5)},
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0]], [2**32 + 1], [1, 2])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )

    # ---------------- §4.7 ragged ----------------
    rg_rows = [[1, 3], [], [2]]
    rg_w = [[2.0, 0.5], [], [3.0]]
    rg_spec = {
        ("sum", False): [4, 0, 2], ("sum", True): [3.5, 0, 6],
        ("mean", False): [2, 0, 2], ("mean", True): [1.4, 0, 2],
        ("sqrtn", False): [2.82843, 0, 2], ("sqrtn", True): [1.69775, 0, 2],
    }  # fmt: skip
    for comb in COMB:
        for weighted in (False, True):
            w = {"a": ragged_w(rg_w)} if weighted else OMIT
            lookup(
                f"ragged_{comb}_{'weighted' if weighted else 'unweighted'}",
                "§4.7a",
                tables={"t": rowid_table(comb)},
                config={"a": fc()},
                features={"a": ragged(rg_rows)},
                weights=w,
                spec=rid(rg_spec[(comb, weighted)]),
            )
        rng = np.random.default_rng(300 + COMB.index(comb))
        rows = [[int(v) for v in rng.integers(0, 8, int(rng.integers(0, 4)))] for _ in range(6)]
        wrows = [rnd_weights(60 + i, len(r)) for i, r in enumerate(rows)]
        lookup(
            f"ragged_{comb}_random_weighted",
            "§4.7a",
            tables={"r": rand_table(60 + COMB.index(comb), comb)},
            config={"a": fc("r")},
            features={"a": ragged(rows)},
            weights={"a": ragged_w(wrows)},
        )
        lookup(
            f"ragged_{comb}_random_unweighted",
            "§4.7a",
            tables={"r": rand_table(60 + COMB.index(comb), comb)},
            config={"a": fc("r")},
            features={"a": ragged(rows)},
        )
        lookup(
            f"ragged_{comb}_weights_zero_negative",
            "§4.7a",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": ragged([[1, 3], [], [2]])},
            weights={"a": ragged_w([[0.0, 0.5], [], [-3.0]])},
            spec=rid({"sum": [1.5, 0, -6], "mean": [3, 0, 2], "sqrtn": [3, 0, -2]}[comb]),
        )
        lookup(
            f"ragged_{comb}_weights_nan_inf",
            "§4.7a/§4.5",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": ragged([[1, 3], [], [2]])},
            weights={"a": ragged_w([[float("nan"), 1.0], [], [float("inf")]])},
            spec=rid(
                {
                    "sum": [float("nan"), 0, float("inf")],
                    "mean": [float("nan"), 0, float("nan")],
                    "sqrtn": [float("nan"), 0, float("nan")],
                }[comb]
            ),
        )
        lookup(
            f"ragged_{comb}_weight_sum_zero",
            "§4.7a",
            tables={"t": rowid_table(comb)},
            config={"a": fc()},
            features={"a": ragged([[1, 3]])},
            weights={"a": ragged_w([[1.0, -1.0]])},
            spec=rid({"sum": [-2], "mean": [0], "sqrtn": [-1.41421]}[comb]),
        )
    lookup(
        "ragged_validate_false_ignored",
        "§4.7",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": ragged([[1, 3], [], [2]])},
        spec=rid([4, 0, 2]),
    )
    lookup(
        "ragged_trailing_empty_rows_kept",
        "§4.7a",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[], [1], [], []])},
        spec=rid([0, 1, 0, 0]),
    )
    lookup(
        "ragged_empty_batch",
        "§4.7a",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([])},
        spec=shape_spec((0, 2)),
    )
    lookup(
        "ragged_all_rows_empty",
        "§4.7a",
        tables=TM,
        config={"a": fc()},
        features={"a": ragged([[], []])},
        spec=rid([0, 0]),
    )
    lookup(
        "ragged_negative_id_error",
        "§4.7a",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, -1], [2]])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "ragged_id_too_large",
        "§4.7a",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1], [10]])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "ragged_int64_id_2pow32_plus_1",
        "§3.3",
        tables={"t": rowid_table("sum", vocab=5)},
        config={"a": fc()},
        features={"a": ragged([[2**32 + 1]])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "ragged_int32_ids_int32_splits",
        "§4.7",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, 3], [2]], "int32", "int32")},
        spec=rid([4, 2]),
    )
    lookup(
        "ragged_int64_ids_int32_splits",
        "§4.7",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, 3], [2]], "int64", "int32")},
        spec=rid([4, 2]),
    )
    for dt, dtype_rows in (
        ("float32", [[1.0], [2.0]]),
        ("int16", [[1], [2]]),
        ("uint8", [[1], [2]]),
    ):
        lookup(
            f"ragged_id_dtype_{dt}",
            "§3.3",
            tables=T,
            config={"a": fc()},
            features={"a": ragged(dtype_rows, dt)},
            spec=err("ValueError"),
        )
    lookup(
        "ragged_rank3_error",
        "§4.7",
        tables=T,
        config={"a": fc()},
        features={"a": ragged_splits([1, 2, 3], [[0, 1, 2], [0, 2, 3]])},
        spec=err("ValueError"),
    )
    lookup(
        "ragged_weight_splits_mismatch",
        "§4.7",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, 3], [2]])},
        weights={"a": ragged_w([[1.0], [2.0, 3.0]])},
        spec=err("InvalidArgumentError"),
    )
    for dt in ("float64", "int32"):
        lookup(
            f"ragged_weight_dtype_{dt}",
            "§4.7",
            tables=T,
            config={"a": fc()},
            features={"a": ragged([[1, 3], [2]])},
            weights={"a": ragged_w([[1, 1], [2]], dt)},
            spec=err("InvalidArgumentError"),
        )
    # (b) sequence
    rs_rows = [[1, 2, 3], [], [4]]
    for seq_len, want in (
        (1, [[1], [0], [4]]),
        (2, [[1, 2], [0, 0], [4, 0]]),
        (4, [[1, 2, 3, 0], [0, 0, 0, 0], [4, 0, 0, 0]]),
    ):
        lookup(
            f"ragged_seq_L{seq_len}",
            "§4.7b",
            tables=T,
            config={"a": fc(L=seq_len)},
            features={"a": ragged(rs_rows)},
            spec=rid(want),
        )
    lookup(
        "ragged_seq_random_table",
        "§4.7b",
        tables={"r": rand_table(26, dim=4)},
        config={"a": fc("r", L=3)},
        features={"a": ragged([[7, 0, 1, 2], [3], [], [6, 6]])},
    )
    lookup(
        "ragged_seq_empty_batch",
        "§4.7b",
        tables=T,
        config={"a": fc(L=3)},
        features={"a": ragged([])},
        spec=shape_spec((0, 3, 2)),
    )
    lookup(
        "ragged_seq_bad_id_beyond_L_raises",
        "§3.4",
        tables=T,
        config={"a": fc(L=1)},
        features={"a": ragged([[1, 10]])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "ragged_seq_weight_error",
        "§4.7b",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": ragged([[1]])},
        weights={"a": ragged_w([[1.0]])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    # (c) output_shape
    b4 = [[1, 3], [], [2], [4, 5, 6]]
    lookup(
        "ragged_os_P_eq_B_2x2",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[2, 2])},
        features={"a": ragged(b4)},
        spec=rid([[4, 0], [2, 15]]),
    )
    lookup(
        "ragged_os_P_eq_B_weighted_mean",
        "§4.7c",
        tables=TM,
        config={"a": fc(output_shape=[4])},
        features={"a": ragged(b4)},
        weights={"a": ragged_w([[1.0, 3.0], [], [2.0], [1.0, 1.0, 2.0]])},
        spec=rid([2.5, 0, 2, 5.25]),
    )
    lookup(
        "ragged_os_P_eq_B_random_sqrtn",
        "§4.7c",
        tables={"r": rand_table(27, "sqrtn", vocab=7, dim=2)},
        config={"a": fc("r", output_shape=[3, 1])},
        features={"a": ragged([[6, 2], [5], [0, 0, 1]])},
        weights={"a": ragged_w([[0.5, 1.5], [2.0], [0.1, 0.2, 0.3]])},
    )
    os_cases: list[tuple[list[int], Any]] = [
        ([8], [1, 3, 0, 0, 2, 0, 4, 5]),
        ([4, 2], [[1, 3], [0, 0], [2, 0], [4, 5]]),
        ([2, 4], [[1, 3, 0, 0], [2, 0, 4, 5]]),
        ([12], [1, 3, 0, 0, 0, 0, 2, 0, 0, 4, 5, 6]),
    ]
    for os_, want_os in os_cases:
        lookup(
            f"ragged_os_P_gt_B_{'x'.join(map(str, os_))}",
            "§4.7c",
            tables=T,
            config={"a": fc(output_shape=os_)},
            features={"a": ragged(b4)},
            spec=rid(want_os),
        )
    lookup(
        "ragged_os_P_gt_B_combiner_and_weights_ignored",
        "§4.7c",
        tables=TM,
        config={"a": fc(output_shape=[8])},
        features={"a": ragged(b4)},
        weights={"a": ragged_w([[5.0, 5.0], [], [5.0], [5.0, 5.0, 5.0]])},
        spec=rid([1, 3, 0, 0, 2, 0, 4, 5]),
    )
    lookup(
        "ragged_os_P_gt_B_random_table",
        "§4.7c",
        tables={"r": rand_table(28, "sum")},
        config={"a": fc("r", output_shape=[2, 3])},
        features={"a": ragged([[7, 1, 0, 5], [2]])},
    )
    lookup(
        "ragged_os_not_factor",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[6])},
        features={"a": ragged(b4)},
        spec=err("ValueError"),
    )
    lookup(
        "ragged_os_P_lt_B",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[2])},
        features={"a": ragged(b4)},
        spec=err("ValueError"),
    )
    lookup(
        "ragged_os_empty_B1",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[])},
        features={"a": ragged([[1, 3]])},
        spec=rid(4),
    )
    lookup(
        "ragged_os_empty_B2",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[])},
        features={"a": ragged([[1], [3]])},
        spec=err("ValueError"),
    )
    lookup(
        "ragged_os_None_dim",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[None])},
        features={"a": ragged([[1], [3]])},
        spec=err("ValueError"),
    )
    lookup(
        "ragged_os_None_and_int_dims",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[None, 2])},
        features={"a": ragged([[1], [3]])},
        spec=err("ValueError"),
    )
    lookup(
        "ragged_os_empty_batch",
        "§4.7c",
        tables=T,
        config={"a": fc(output_shape=[2])},
        features={"a": ragged([])},
        spec=err("InvalidArgumentError"),
    )
    lookup(
        "ragged_os_wins_over_L_sequence",
        "§4.7c",
        tables=T,
        config={"a": fc(L=1, output_shape=[8])},
        features={"a": ragged(b4)},
        spec=rid([1, 3, 0, 0, 2, 0, 4, 5]),
    )
    lookup(
        "ragged_os_wins_over_L_combine",
        "§4.7c",
        tables=T,
        config={"a": fc(L=3, output_shape=[4])},
        features={"a": ragged(b4)},
        spec=rid([4, 0, 2, 15]),
    )
    lookup(
        "ragged_os_with_L_weight_error",
        "§4.7c",
        tables=T,
        config={"a": fc(L=3, output_shape=[4])},
        features={"a": ragged(b4)},
        weights={"a": ragged_w([[1.0, 1.0], [], [1.0], [1.0, 1.0, 1.0]])},
        spec=err("ValueError"),
        keywords=("a",),
    )

    # ---------------- §3.1 structure and path matching ----------------
    three = {"a": fc(), "m": fc(), "z": fc()}
    lookup(
        "struct_not_a_subset",
        "§3.1",
        tables=T,
        config=three,
        features={"q": dense([1]), "z": dense([2])},
        spec=err("ValueError"),
        keywords=("q",),
    )
    lookup(
        "struct_subset_ok",
        "§3.1",
        tables=T,
        config=three,
        features={"z": dense([2]), "a": dense([1])},
        spec=rid([Spec([1]), Spec([2])]),
    )
    lookup(
        "struct_tuple_input_list_config",
        "§3.1",
        tables=T,
        config=[fc(), fc()],
        features=(dense([1]), dense([2])),
        spec=rid([Spec([1]), Spec([2])]),
    )
    lookup(
        "struct_list_input_list_config",
        "§3.1",
        tables=T,
        config=[fc(), fc()],
        features=[dense([1]), dense([2])],
        spec=rid([Spec([1]), Spec([2])]),
    )
    lookup(
        "struct_list_input_tuple_config",
        "§3.1",
        tables=T,
        config=(fc(), fc()),
        features=[dense([3]), dense([4])],
        spec=rid([Spec([3]), Spec([4])]),
    )
    lookup(
        "struct_dict_str_index_keys_list_config",
        "§3.1",
        tables=T,
        config=[fc(), fc()],
        features={"0": dense([1]), "1": dense([2])},
        spec=rid([Spec([1]), Spec([2])]),
    )
    lookup(
        "struct_dict_subset_index_key_list_config",
        "§3.1",
        tables=T,
        config=[fc(), fc(L=2)],
        features={"1": sparse([[0, 1]], [5], [1, 2])},
        spec=rid([[0, 5]]),
    )
    lookup(
        "struct_list_too_long_for_config",
        "§3.1",
        tables=T,
        config=[fc()],
        features=[dense([1]), dense([2])],
        spec=err("ValueError"),
    )
    nt = namedtuple_class("Feats", ["user", "item"])
    lookup(
        "struct_namedtuple_config_dict_input",
        "§3.1",
        tables=T,
        config=nt(fc(), fc(L=2)),
        features={"user": dense([3]), "item": ragged([[1, 2, 3]])},
        spec=rid([Spec([[1, 2]]), Spec([3])]),
    )
    lookup(
        "struct_namedtuple_config_namedtuple_input",
        "§3.1",
        tables=T,
        config=nt(fc(), fc()),
        features=nt(dense([3]), dense([4])),
        spec=rid([Spec([3]), Spec([4])]),
    )
    lookup(
        "struct_namedtuple_config_tuple_input",
        "§3.1",
        tables=T,
        config=nt(fc(), fc()),
        features=(dense([3]), dense([4])),
        spec=err("ValueError"),
    )
    lookup(
        "struct_nested_config_joined_key",
        "§3.1",
        tables=T,
        config={"x": {"y": fc()}, "w": fc()},
        features={"x/y": dense([6])},
        spec=rid([6]),
    )
    lookup(
        "struct_nested_config_nested_input",
        "§3.1",
        tables=T,
        config={"x": {"y": fc(), "z": [fc(), fc()]}},
        features={"x": {"z": [dense([1]), dense([2])], "y": dense([3])}},
        spec=rid([Spec([3]), Spec([1]), Spec([2])]),
    )
    lookup(
        "struct_nested_config_mixed_nesting",
        "§3.1",
        tables=T,
        config={"x": {"z": [fc(), fc()]}},
        features={"x/z": {"1": dense([8])}},
        spec=rid([8]),
    )
    lookup(
        "struct_lone_config_bare_tensor",
        "§3.1",
        tables=T,
        config=fc(),
        features=dense([1, 2]),
        spec=rid([1, 2]),
    )
    lookup(
        "struct_lone_config_bare_sparse",
        "§3.1",
        tables=T,
        config=fc(),
        features=sparse([[0, 0], [0, 1]], [1, 2], [1, 2]),
        spec=rid([3]),
    )
    lookup(
        "struct_lone_config_list_input",
        "§3.1",
        tables=T,
        config=fc(),
        features=[dense([1, 2])],
        spec=err("ValueError"),
    )
    lookup(
        "struct_lone_config_dict_input",
        "§3.1",
        tables=T,
        config=fc(),
        features={"a": dense([1])},
        spec=err("ValueError"),
    )
    lookup(
        "struct_list_config_bare_tensor",
        "§3.1",
        tables=T,
        config=[fc()],
        features=dense([1]),
        spec=err("ValueError"),
    )
    lookup("struct_features_empty_dict", "§3.1", tables=T, config=three, features={}, spec=None)
    lookup("struct_features_empty_list", "§3.1", tables=T, config=[fc()], features=[], spec=None)
    lookup(
        "struct_features_none_dict_config",
        "§3.1",
        tables=T,
        config=three,
        features=None,
        spec=err("ValueError"),
    )
    lookup(
        "struct_features_none_lone_config",
        "§3.1",
        tables=T,
        config=fc(),
        features=None,
        spec=err("ValueError"),
    )
    lookup(
        "struct_python_list_is_structure",
        "§3.1",
        tables=T,
        config={"f": fc()},
        features={"f": [pyint(1), pyint(2)]},
        spec=err("ValueError"),
        keywords=("f/0",),
    )
    lookup(
        "struct_leaf_python_int",
        "§3.1",
        tables=T,
        config={"f": fc()},
        features={"f": pyint(3)},
        spec=err("ValueError"),
        keywords=("f",),
    )
    lookup(
        "struct_leaf_none",
        "§3.1",
        tables=T,
        config={"f": fc()},
        features={"f": None},
        spec=err("ValueError"),
        keywords=("f",),
    )
    lookup(
        "struct_feature_name_not_used_for_matching",
        "§1.2",
        tables=T,
        config={"a": fc(name="alpha")},
        features={"alpha": dense([1])},
        spec=err("ValueError"),
        keywords=("alpha",),
    )
    lookup(
        "struct_first_failing_leaf_in_path_order",
        "§3.1",
        tables=T,
        config={"a": fc(), "z": fc()},
        features={"z": dense([11]), "a": dense([10])},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "struct_mixed_kinds_one_call",
        "§3.1",
        tables={"t": rowid_table("sum"), "r": rand_table(29, "mean", vocab=6, dim=2)},
        config={"d": fc(), "s": fc("r"), "g": fc("r"), "q": fc(L=2), "p": fc(validate=False)},
        features={
            "d": dense([[1, 2]]),
            "s": sparse([[0, 0], [1, 0], [1, 1]], [4, 1, 2], [2, 2]),
            "g": ragged([[5], [0, 3]]),
            "q": ragged([[7, 8, 9]]),
            "p": sparse([[0, 0], [0, 1]], [2, 2], [2, 2]),
        },
        weights={
            "d": None,
            "s": sparse_w([[0, 0], [1, 0], [1, 1]], [1.0, 2.0, 0.5], [2, 2]),
            "g": ragged_w([[2.0], [1.0, 1.0]]),
            "q": None,
            "p": None,
        },
    )
    lookup(
        "struct_shared_table_two_features",
        "§2.1",
        tables={"r": rand_table(31, "sum")},
        config={"a": fc("r"), "b": fc("r", L=2)},
        features={"a": sparse([[0, 0], [0, 1]], [1, 2], [1, 2]), "b": ragged([[1, 2, 3]])},
    )
    lookup(
        "struct_two_equal_tables_distinct",
        "§1.3",
        tables={"t1": rowid_table("sum", offset=0), "t2": rowid_table("sum", offset=100)},
        config={"a": fc("t1"), "b": fc("t2")},
        features={"a": dense([1]), "b": dense([1])},
        spec=rid([Spec([1]), Spec([101])]),
    )
    lookup(
        "struct_embedding_lookup_method",
        "§3",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, 2]])},
        call="embedding_lookup",
        weights={"a": ragged_w([[1.0, 2.0]])},
        spec=rid([5]),
    )
    lookup(
        "struct_weights_none_explicit",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, 2]])},
        weights=None,
        spec=rid([3]),
    )
    lookup(
        "struct_quantization_ignored",
        "§1.5",
        tables={"t": rowid_table("sum", quantization=[2, 0.0, 1.0])},
        config={"a": fc()},
        features={"a": dense([7])},
        spec=rid([7]),
    )
    lookup(
        "struct_rowid_offset_fractional",
        "§1.6",
        tables={"t": rowid_table("sum", offset=0.5)},
        config={"a": fc()},
        features={"a": dense([0, 2])},
        spec=rid([0.5, 2.5]),
    )
    lookup(
        "struct_table_dtype_int32_still_float32",
        "§2.3",
        tables={"t": rowid_table("sum", dtype="int32")},
        config={"a": fc()},
        features={"a": dense([3])},
        spec=rid([3]),
    )

    # ---------------- §3.2 weights structure and types ----------------
    two = {"a": fc(), "b": fc()}
    ab = {"a": sparse([[0, 0]], [1], [1, 1]), "b": sparse([[0, 0]], [2], [1, 1])}
    lookup(
        "weights_missing_key",
        "§3.2",
        tables=T,
        config=two,
        features=ab,
        weights={"a": sparse_w([[0, 0]], [1.0], [1, 1])},
        spec=err("ValueError"),
    )
    lookup(
        "weights_list_for_dict",
        "§3.2",
        tables=T,
        config=two,
        features=ab,
        weights=[sparse_w([[0, 0]], [1.0], [1, 1]), None],
        spec=err("TypeError"),
    )
    lookup(
        "weights_empty_dict",
        "§3.2",
        tables=T,
        config=two,
        features=ab,
        weights={},
        spec=err("ValueError"),
    )
    lookup(
        "weights_extra_key",
        "§3.2",
        tables=T,
        config=two,
        features={"a": ab["a"]},
        weights={"a": None, "b": None},
        spec=err("ValueError"),
    )
    lookup(
        "weights_none_leaves",
        "§3.2",
        tables=T,
        config=two,
        features=ab,
        weights={"a": None, "b": None},
        spec=rid([Spec([1]), Spec([2])]),
    )
    lookup(
        "weights_partial_none",
        "§3.2",
        tables=T,
        config=two,
        features=ab,
        weights={"a": sparse_w([[0, 0]], [3.0], [1, 1]), "b": None},
        spec=rid([Spec([3]), Spec([2])]),
    )
    lookup(
        "weights_dense_for_sparse",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0]], [1], [1, 1])},
        weights={"a": dense_w([[1.0]])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "weights_ragged_for_sparse",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0]], [1], [1, 1])},
        weights={"a": ragged_w([[1.0]])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "weights_sparse_for_ragged",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1]])},
        weights={"a": sparse_w([[0, 0]], [1.0], [1, 1])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "weights_dense_for_ragged",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1]])},
        weights={"a": dense_w([[1.0]])},
        spec=err("ValueError"),
        keywords=("a",),
    )
    lookup(
        "weights_check_order_type_before_sequence",
        "§3.2",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0]], [1], [1, 2])},
        weights={"a": ragged_w([[1.0]])},
        spec=err("ValueError"),
        keywords=("a",),
        note="TF's message is the type mismatch one, not the sequence one",
    )
    lookup(
        "weights_checked_before_lookup",
        "§3.2",
        tables=T,
        config={"a": fc()},
        features={"a": dense([99])},
        weights={"a": dense_w([1.0])},
        spec=err("ValueError"),
        keywords=("a",),
        note="the dense-weight ValueError wins over the out-of-range id",
    )

    # ---------------- §5 serving_embedding_lookup ----------------
    ar = np.arange(20, dtype=np.float32).reshape(10, 2)
    SE = "serving_embedding_lookup"  # noqa: N806
    lookup(
        "sel_dense",
        "§5",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 2])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar},
    )
    lookup(
        "sel_sparse_weighted",
        "§5",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [0, 1]], [1, 2], [1, 2])},
        weights={"a": sparse_w([[0, 0], [0, 1]], [1.0, 2.0], [1, 2])},
        api=SE,
        lookup_tables={"t": ar},
    )
    lookup(
        "sel_sparse_sequence",
        "§5",
        tables=T,
        config={"a": fc(L=2)},
        features={"a": sparse([[0, 0]], [3], [1, 2])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar},
    )
    lookup(
        "sel_ragged_mean",
        "§5",
        tables=TM,
        config={"a": fc()},
        features={"a": ragged([[1, 2, 9], []])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar},
    )
    lookup(
        "sel_random_values_mixed",
        "§5",
        tables={"r": rand_table(32, "sqrtn", vocab=5)},
        config={"a": fc("r"), "b": fc("r", validate=False), "c": fc("r", L=3)},
        features={
            "a": sparse([[0, 0], [0, 2], [1, 1]], [4, 0, 3], [2, 3]),
            "b": sparse([[0, 0], [1, 0], [1, 1]], [1, 2, 3], [2, 2]),
            "c": ragged([[0, 1], [2, 3, 4, 4]]),
        },
        weights={
            "a": sparse_w([[0, 0], [0, 2], [1, 1]], [0.7, 1.3, 0.2], [2, 3]),
            "b": sparse_w([[0, 0], [1, 0], [1, 1]], [1.1, 0.4, 2.5], [2, 2]),
            "c": None,
        },
        api=SE,
        lookup_tables={"r": random_values(33, (5, 3))},
        note="lookup_tables values differ from the TableConfig initializer: the given "
        "arrays are what is read",
    )
    lookup(
        "sel_table_smaller_than_vocab",
        "§5",
        tables=T,
        config={"a": fc()},
        features={"a": dense([5])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar[:3]},
        spec=err("InvalidArgumentError"),
        bad_feature="a",
    )
    lookup(
        "sel_table_smaller_than_vocab_ok_ids",
        "§5",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[0, 2], [1]])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar[:3]},
    )
    lookup(
        "sel_table_larger_than_vocab",
        "§5",
        tables=T,
        config={"a": fc()},
        features={"a": dense([11])},
        weights=None,
        api=SE,
        lookup_tables={"t": np.arange(24, dtype=np.float32).reshape(12, 2)},
    )
    lookup(
        "sel_missing_table",
        "§5",
        tables={"t": rowid_table("sum"), "u": rowid_table()},
        config={"a": fc("t"), "b": fc("u")},
        features={"a": dense([1]), "b": dense([1])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar},
        spec=err("KeyError"),
    )
    lookup(
        "sel_tables_keyed_by_name",
        "§5",
        tables={"t": rowid_table("sum", name="tbl")},
        config={"a": fc()},
        features={"a": dense([1])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar},
        lookup_tables_key="name",
        spec=err("KeyError"),
    )
    lookup(
        "sel_unused_missing_table_ok",
        "§5",
        tables={"t": rowid_table("sum"), "u": rowid_table()},
        config={"a": fc("t"), "b": fc("u")},
        features={"a": dense([1])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar},
    )
    ar64 = np.arange(20, dtype=np.float64).reshape(10, 2)
    lookup(
        "sel_float64_table_dense",
        "§4.9",
        tables=T,
        config={"a": fc()},
        features={"a": dense([1, 2])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar64},
    )
    lookup(
        "sel_float64_table_sparse_plain",
        "§4.9",
        tables=T,
        config={"a": fc(validate=False)},
        features={"a": sparse([[0, 0], [1, 0]], [1, 2], [2, 2])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar64},
    )
    lookup(
        "sel_float64_table_sparse_validated",
        "§4.9",
        tables=T,
        config={"a": fc()},
        features={"a": sparse([[0, 0], [1, 0]], [1, 2], [2, 2])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar64},
    )
    lookup(
        "sel_float64_table_ragged",
        "§4.9",
        tables=T,
        config={"a": fc()},
        features={"a": ragged([[1, 2], [3]])},
        weights=None,
        api=SE,
        lookup_tables={"t": ar64},
    )


# --------------------------------------------------------------------------------------------
# TPUEmbeddingForServing construction / build cases
# --------------------------------------------------------------------------------------------

EMBEDDING_CASES: list[dict[str, Json]] = []


def construct(
    name: str,
    section: str,
    *,
    tables: dict[str, dict[str, Json]],
    config: Any,
    optimizers: list[Json],
    lookups: list[Any] | None = None,
    spec: Json = None,
    keywords: tuple[str, ...] = (),
    note: str | None = None,
) -> None:
    """Register a construction case.

    ``optimizers`` lists the global optimizer of each successive ``TPUEmbeddingForServing``
    built from the *same* TableConfig objects (``"omit"``: the argument is not passed). After
    each construction TF's ``build()`` runs; then ``embedding_tables``, ``variables`` and the
    (possibly mutated) TableConfigs are recorded. ``lookups`` are feature structures looked up
    on the last object.
    """
    assert all(c["name"] != name for c in EMBEDDING_CASES), name
    case: dict[str, Json] = {
        "name": name,
        "section": section,
        "tables": tables,
        "feature_config": struct(config),
        "steps": [{"optimizer": o} for o in optimizers],
    }
    if lookups:
        case["lookups"] = [{"features": struct(f)} for f in lookups]
    if keywords:
        case["embserve_keywords"] = list(keywords)
    if note:
        case["note"] = note
    _SPECS[name] = spec
    EMBEDDING_CASES.append(case)


def enc_stored_optimizer(o: Any) -> Json:
    """Encode an optimizer stored on a TableConfig after construction."""
    if o is None:
        return None
    if isinstance(o, (str, int, float)):
        return o
    return {"type": "optimizer", "class": type(o).__name__, "attributes": enc_attrs(o)}


def enc_attrs(o: Any) -> Json:
    """Public attributes of a TF optimizer, encoded."""
    return {k: enc_py(v) for k, v in sorted(vars(o).items()) if not k.startswith("_")}


def run_construct(case: dict[str, Json]) -> None:
    """Run one construction case through TensorFlow and fill each step's ``expect``."""
    tables = make_tables(case["tables"])
    config = decode_struct(case["feature_config"], tf_feature_leaf(tables))
    emb = None
    for step in case["steps"]:
        expect: dict[str, Json] = {}
        stage = "construct"
        try:
            if step["optimizer"] == "omit":
                emb = E.TPUEmbeddingForServing(config)
            else:
                emb = E.TPUEmbeddingForServing(config, make_optimizer(step["optimizer"]))
            stage = "build"
            emb.build()
            stage = "read"
            et = emb.embedding_tables
            ref_of = {id(t): r for r, t in tables.items()}
            expect["embedding_tables"] = [
                {
                    "table": ref_of[id(k)],
                    "name": k.name,
                    "value": table_summary(case["tables"][ref_of[id(k)]], v.numpy()),
                }
                for k, v in et.items()
            ]
            var = emb.variables
            expect["variables_key_types"] = sorted({type(k).__name__ for k in var})
            by_name = {k.name: v for k, v in et.items()}
            expect["variables"] = {
                name: {
                    slot: {
                        "shape": list(v.shape),
                        "dtype": v.dtype.name,
                        "trainable": bool(v.trainable),
                        # The table itself is recorded once, under embedding_tables.
                        **(
                            {"is_embedding_table": v is by_name[name]}
                            if slot == "parameters"
                            else fill_or_values(v.numpy())
                        ),
                    }
                    for slot, v in slots.items()
                }
                for name, slots in var.items()
            }
        except Exception as e:
            expect["error"] = encode_error(e, stage)
        expect["tables_after"] = {
            r: {"name": enc_py(t.name), "optimizer": enc_stored_optimizer(t.optimizer)}
            for r, t in tables.items()
        }
        step["expect"] = expect
    if "lookups" in case:
        for lk in case["lookups"]:
            feats = decode_struct(lk["features"], tf_input_leaf)
            try:
                assert emb is not None, case["name"]
                lk["expect"] = {"output": encode_output(emb(feats))}
            except Exception as e:
                lk["expect"] = {"error": encode_error(e)}


def table_summary(spec: Json, a: np.ndarray) -> Json:
    """The table's values; for the (unseeded) default initializer, only what is specified.

    TF's default is a truncated normal with stddev ``1/sqrt(dim)``, cut at two stddevs: the
    test checks the bound, the mean and the standard deviation (theory: 0.8796 x stddev).
    """
    if spec["initializer"] is not None:
        return enc_array(a)
    stddev = 1.0 / math.sqrt(spec["dim"])
    assert np.all(np.abs(a) <= 2 * stddev)
    return {
        "type": "truncated_normal",
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "stddev": stddev,
        "observed_std": round(float(a.std()), 4),
        "observed_mean": round(float(a.mean()), 4),
    }


def fill_or_values(a: np.ndarray) -> dict[str, Json]:
    """A constant array as its fill value, otherwise all its values."""
    flat = a.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return {"fill": enc_float(float(flat[0]))}
    return {"values": enc_values(a)}


def define_embedding_cases() -> None:
    """TPUEmbeddingForServing construction, naming, optimizers, slots, variables (§2)."""
    R = rowid_table  # noqa: N806
    construct(
        "naming_table_i_in_flatten_order",
        "§2.1",
        tables={"p": R(), "q": R(), "s": R()},
        config={"zz": fc("p"), "aa": fc("q"), "mm": fc("s")},
        optimizers=[None],
        note="dict keys sorted: aa(q)=table_0, mm(s)=table_1, zz(p)=table_2",
    )
    construct(
        "naming_named_tables_count",
        "§2.1",
        tables={"p": R(name="first"), "q": R(), "s": R(name="third")},
        config=[fc("p"), fc("q"), fc("s"), fc("q")],
        optimizers=[None],
    )
    construct(
        "naming_duplicate_names",
        "§2.1",
        tables={"p": R(name="same"), "q": R(name="same")},
        config=[fc("p"), fc("q")],
        optimizers=[None],
        spec=err("ValueError"),
        keywords=("same",),
    )
    construct(
        "naming_collision_with_auto_name",
        "§2.1",
        tables={"p": R(name="table_1"), "q": R()},
        config=[fc("p"), fc("q")],
        optimizers=[None],
        spec=err("ValueError"),
        keywords=("table_1",),
        note="q is left named table_1 after the failure",
    )
    construct(
        "shared_table_one_variable",
        "§2.1",
        tables={"p": R()},
        config={"a": fc("p"), "b": fc("p", L=3)},
        optimizers=[None],
    )
    construct(
        "equal_tables_are_distinct",
        "§1.3",
        tables={"p": R(), "q": R()},
        config={"a": fc("p"), "b": fc("q")},
        optimizers=[None],
    )
    construct(
        "table_order_first_appearance",
        "§2.1",
        tables={"p": R(), "q": R(vocab=3), "s": R(vocab=4)},
        config=[fc("s"), {"x": fc("q"), "a": fc("s")}, (fc("p"), fc("q"))],
        optimizers=[None],
    )
    construct(
        "optimizer_omitted_type_error",
        "§2",
        tables={"p": R()},
        config={"a": fc("p")},
        optimizers=["omit"],
        spec=err("TypeError"),
    )
    construct(
        "optimizer_global_str",
        "§2.1",
        tables={"p": R()},
        config={"a": fc("p")},
        optimizers=["sgd"],
        spec=err("ValueError"),
    )
    construct(
        "optimizer_global_int",
        "§2.1",
        tables={"p": R()},
        config={"a": fc("p")},
        optimizers=[3],
        spec=err("ValueError"),
    )
    construct(
        "optimizer_per_table_str",
        "§2.1",
        tables={"p": R(optimizer="adam")},
        config={"a": fc("p")},
        optimizers=[None],
        spec=err("ValueError"),
    )
    construct(
        "optimizer_none_no_slots",
        "§2.3",
        tables={"p": R(), "q": R(dim=3)},
        config={"a": fc("p"), "b": fc("q")},
        optimizers=[None],
    )
    for cls, kw in (
        ("SGD", {}),
        ("SGD", {"learning_rate": 0.5}),
        ("Adagrad", {}),
        ("Adagrad", {"initial_accumulator_value": 0.7}),
        ("AdagradMomentum", {}),
        ("Adam", {}),
        ("FTRL", {}),
        ("FTRL", {"initial_accumulator_value": 0.3}),
    ):
        suffix = "_".join(f"{k}_{v}" for k, v in kw.items())
        construct(
            f"slots_global_{cls}{'_' + suffix if suffix else ''}",
            "§2.3",
            tables={"p": R(), "q": rand_table(70, vocab=4, dim=3)},
            config={"a": fc("p"), "b": fc("q")},
            optimizers=[opt(cls, **kw)],
        )
    construct(
        "slots_per_table_overrides_global",
        "§2.3",
        tables={"p": R(), "tb": R(name="tb", optimizer=opt("Adam"))},
        config={"a": fc("p"), "b": fc("tb")},
        optimizers=[opt("Adagrad", initial_accumulator_value=0.7)],
    )
    construct(
        "slots_per_table_with_global_none",
        "§2.3",
        tables={"p": R(), "q": R(optimizer=opt("FTRL", initial_accumulator_value=0.3))},
        config={"a": fc("p"), "b": fc("q")},
        optimizers=[None],
    )
    construct(
        "second_object_keeps_first_global_optimizer",
        "§2.1",
        tables={"p": R(), "q": R(optimizer=opt("SGD"))},
        config={"a": fc("p"), "b": fc("q")},
        optimizers=[opt("Adagrad"), opt("Adam")],
        note="the first object's global Adagrad was written onto p, so p keeps it",
    )
    construct(
        "empty_dict_config", "§2.1", tables={}, config={}, optimizers=[opt("SGD")], lookups=[{}]
    )
    construct("empty_list_config", "§2.1", tables={}, config=[], optimizers=[None], lookups=[[]])
    construct(
        "leaf_none",
        "§2.1",
        tables={"p": R()},
        config={"a": fc("p"), "b": None},
        optimizers=[None],
        spec=err("AttributeError"),
    )
    construct(
        "leaf_table_config",
        "§2.1",
        tables={"p": R()},
        config={"a": table_leaf("p")},
        optimizers=[None],
        spec=err("AttributeError"),
    )
    construct(
        "leaf_string",
        "§2.1",
        tables={},
        config=[pystr("feature")],
        optimizers=[None],
        spec=err("AttributeError"),
    )
    construct(
        "config_none", "§2.1", tables={}, config=None, optimizers=[None], spec=err("AttributeError")
    )
    construct(
        "config_unsortable_keys",
        "§2.1",
        tables={"p": R()},
        config={1: fc("p"), "a": fc("p")},
        optimizers=[None],
        spec=err("TypeError"),
    )
    construct(
        "table_dtype_int32_variable_float32",
        "§2.3",
        tables={"p": R(dtype="int32")},
        config={"a": fc("p")},
        optimizers=[opt("Adagrad")],
    )
    default_init = R(vocab=2000, dim=16)
    default_init["initializer"] = None
    construct(
        "initializer_default_truncated_normal",
        "§2.4",
        tables={"p": default_init},
        config={"a": fc("p")},
        optimizers=[None],
    )
    construct(
        "initializer_values_random",
        "§2.4",
        tables={"p": rand_table(71, vocab=5, dim=4)},
        config=fc("p"),
        optimizers=[None],
        lookups=[dense([[4, 0]])],
    )
    init64 = rand_table(72, vocab=3, dim=2)
    init64["initializer"]["dtype"] = "float64"
    construct(
        "initializer_float64_converted",
        "§2.4",
        tables={"p": init64},
        config={"a": fc("p")},
        optimizers=[None],
    )
    bad_shape = rand_table(73, vocab=4, dim=2)
    bad_shape["vocabulary_size"] = 3
    construct(
        "initializer_wrong_shape",
        "§2.4",
        tables={"p": bad_shape},
        config={"a": fc("p")},
        optimizers=[None],
        spec=err("ValueError"),
    )
    no_dtype = R()
    no_dtype["initializer"] = {"type": "no_dtype_kwarg"}
    construct(
        "initializer_without_dtype_kwarg",
        "§2.4",
        tables={"p": no_dtype},
        config={"a": fc("p")},
        optimizers=[None],
        spec=err("TypeError"),
    )


# --------------------------------------------------------------------------------------------
# Config-constructor cases
# --------------------------------------------------------------------------------------------

CONFIG_CASES: list[dict[str, Json]] = []


def tag(kind: str, **kw: Any) -> dict[str, Json]:
    """A tagged argument value (see ``dec_py``)."""
    return {"type": kind, **kw}


def dec_py(v: Json, tables: dict[str, Any]) -> Any:
    """Decode a config-case argument into the TensorFlow-side Python value."""
    if isinstance(v, list):
        raise TypeError("plain JSON lists are not used; tag them")
    if not isinstance(v, dict):
        return v
    t = v["type"]
    if t == "float":
        return float(v["value"])
    if t == "np_scalar":
        return np.dtype(v["dtype"]).type(v["value"])
    if t == "np_type":
        return np.dtype(v["name"]).type
    if t == "dtype":
        return tf.as_dtype(v["name"])
    if t == "tuple":
        return tuple(dec_py(x, tables) for x in v["items"])
    if t == "list":
        return [dec_py(x, tables) for x in v["items"]]
    if t == "table":
        return tables[v["ref"]]
    if t == "rowid":
        return E.RowIdInitializer(offset=v["offset"])
    if t == "const_fn":
        value = v["value"]
        return lambda: value
    if t == "object":
        return object()
    if t == "optimizer":
        return getattr(E, v["class"])(**{k: dec_py(x, tables) for k, x in v["kwargs"].items()})
    if t == "quantization":
        return E.QuantizationConfig(v["num_buckets"], v["lower"], v["upper"])
    raise ValueError(v)


def enc_py(v: Any) -> Json:
    """Encode a stored attribute value (TF side) so the test can compare it."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else tag("float", value=enc_float64(v))
    if isinstance(v, np.generic):
        return tag("np_scalar", dtype=v.dtype.name, value=v.item())
    if isinstance(v, tf.DType):
        return tag("dtype", name=v.name)
    if isinstance(v, type) and issubclass(v, np.generic):
        return tag("dtype", name=np.dtype(v).name)
    if isinstance(v, tf.TensorShape):
        return tag("shape", dims=None if v.rank is None else [d for d in v.as_list()])
    if isinstance(v, tuple):
        return tag("tuple", items=[enc_py(x) for x in v])
    if isinstance(v, list):
        return tag("list", items=[enc_py(x) for x in v])
    if isinstance(v, E.QuantizationConfig):
        return tag("quantization", num_buckets=v.num_buckets, lower=v.lower, upper=v.upper)
    if isinstance(v, E.TableConfig):
        return tag("table_config")
    if type(v).__name__ in ("SGD", "Adagrad", "AdagradMomentum", "Adam", "FTRL"):
        return enc_stored_optimizer(v)
    if callable(v):
        return tag("callable")
    raise TypeError(f"cannot encode stored value {v!r}")


ATTRS = {
    "TableConfig": ["vocabulary_size", "dim", "initializer", "optimizer", "combiner", "name",
                    "quantization_config", "layout", "dtype"],
    "FeatureConfig": ["table", "max_sequence_length", "validate_weights_and_indices",
                      "output_shape", "name"],
    "QuantizationConfig": ["num_buckets", "lower", "upper"],
    "RowIdInitializer": ["offset"],
}  # fmt: skip


def cfg(
    name: str,
    section: str,
    target: str,
    /,
    *args: Json,
    tables: dict[str, dict[str, Json]] | None = None,
    op: str = "construct",
    other: dict[str, Json] | None = None,
    call_args: list[Json] | None = None,
    call_kwargs: dict[str, Json] | None = None,
    spec: Json = None,
    keywords: tuple[str, ...] = (),
    note: str | None = None,
    **kwargs: Json,
) -> None:
    """Register a config case: ``target(*args, **kwargs)`` then ``op``.

    ``op``: ``"construct"`` (stored attributes, repr), ``"eq"`` (compare with ``other``, a
    ``{"target", "args", "kwargs"}`` spec), ``"hash"``, or ``"call"`` (call the constructed
    object with ``call_args`` / ``call_kwargs``; RowIdInitializer).
    """
    assert all(c["name"] != name for c in CONFIG_CASES), name
    case: dict[str, Json] = {
        "name": name,
        "section": section,
        "target": target,
        "args": list(args),
        "kwargs": kwargs,
        "op": op,
        "tables": tables or {},
    }
    if other is not None:
        case["other"] = other
    if call_args is not None or call_kwargs is not None:
        case["call_args"] = call_args or []
        case["call_kwargs"] = call_kwargs or {}
    if keywords:
        case["embserve_keywords"] = list(keywords)
    if note:
        case["note"] = note
    _SPECS[name] = spec
    CONFIG_CASES.append(case)


def run_config(case: dict[str, Json]) -> Json:
    """Run one config case through TensorFlow."""
    tables = make_tables(case["tables"])

    def build(target: str, args: list[Json], kwargs: dict[str, Json]) -> Any:
        fn = getattr(E, target)
        return fn(
            *[dec_py(a, tables) for a in args], **{k: dec_py(v, tables) for k, v in kwargs.items()}
        )

    try:
        obj = build(case["target"], case["args"], case["kwargs"])
        if case["op"] == "construct":
            names = ATTRS.get(case["target"])
            attrs = {n: enc_py(getattr(obj, n)) for n in names} if names else enc_attrs(obj)
            r = scrub(repr(obj))
            out: dict[str, Json] = {"attributes": attrs}
            if "0x…" not in r and case["target"] in ("TableConfig", "QuantizationConfig"):
                out["repr"] = r
            return out
        if case["op"] == "eq":
            o = case["other"]
            other = build(o["target"], o["args"], o["kwargs"])
            res: dict[str, Json] = {"eq": obj == other, "ne": obj != other}
            try:
                res["hash_eq"] = hash(obj) == hash(other)
            except TypeError:
                res["hash_eq"] = None
            return res
        if case["op"] == "hash":
            hash(obj)
            return {"hashable": True}
        if case["op"] == "call":
            val = obj(
                *[dec_py(a, tables) for a in case["call_args"]],
                **{k: dec_py(v, tables) for k, v in case["call_kwargs"].items()},
            )
            return {"result": enc_array(np.asarray(val))}
        raise ValueError(case["op"])
    except Exception as e:
        return {"error": encode_error(e)}


def define_config_cases() -> None:
    """Constructors of TableConfig, FeatureConfig, optimizers, QuantizationConfig (§1)."""
    npi64 = tag("np_scalar", dtype="int64", value=5)
    npi32 = tag("np_scalar", dtype="int32", value=2)
    VE = err("ValueError")  # noqa: N806
    # TableConfig
    cfg("table_minimal", "§1.1", "TableConfig", 5, 4)
    cfg(
        "table_all_args",
        "§1.1",
        "TableConfig",
        7,
        3,
        initializer=tag("rowid", offset=2),
        optimizer=tag("optimizer", **{"class": "Adagrad"}, kwargs={}),
        combiner="sqrtn",
        name="tbl",
        quantization_config=tag("quantization", num_buckets=4, lower=-1.0, upper=1.0),
        layout="some-layout",
        dtype=tag("np_type", name="float32"),
    )
    for v, label in (
        (0, "zero"),
        (-1, "negative"),
        (npi64, "np_int64"),
        (2.0, "float"),
        ("5", "str"),
        (None, "none"),
    ):
        cfg(
            f"table_vocab_{label}",
            "§1.1",
            "TableConfig",
            v,
            4,
            spec=VE,
            keywords=("vocabulary_size",),
        )
    cfg("table_vocab_true_accepted", "§1.1", "TableConfig", True, 4)
    for v, label in ((0, "zero"), ("4", "str"), (2.0, "float"), (npi32, "np_int32")):
        cfg(f"table_dim_{label}", "§1.1", "TableConfig", 5, v, spec=VE, keywords=("dim",))
    cfg(
        "table_initializer_not_callable",
        "§1.1",
        "TableConfig",
        5,
        4,
        initializer=5,
        spec=VE,
        keywords=("initializer",),
    )
    cfg("table_initializer_rowid", "§1.1", "TableConfig", 5, 4, initializer=tag("rowid", offset=0))
    for c in ("sum", "mean", "sqrtn"):
        cfg(f"table_combiner_{c}", "§1.1", "TableConfig", 5, 4, combiner=c)
    for c, label in (("SUM", "upper"), ("max", "max"), ("", "empty")):
        cfg(
            f"table_combiner_{label}",
            "§1.1",
            "TableConfig",
            5,
            4,
            combiner=c,
            spec=VE,
            keywords=("combiner",),
        )
    cfg(
        "table_combiner_none",
        "§1.1",
        "TableConfig",
        5,
        4,
        combiner=None,
        spec=VE,
        keywords=("combiner",),
    )
    cfg(
        "table_combiner_int",
        "§1.1",
        "TableConfig",
        5,
        4,
        combiner=1,
        spec=VE,
        keywords=("combiner",),
    )
    for d, label in (
        (tag("np_type", name="float32"), "np_float32"),
        (tag("np_type", name="int32"), "np_int32"),
        ("float32", "str_float32"),
        ("int32", "str_int32"),
        (tag("dtype", name="float32"), "tf_float32"),
        (tag("dtype", name="int32"), "tf_int32"),
    ):
        cfg(f"table_dtype_{label}", "§1.1", "TableConfig", 5, 4, dtype=d)
    for d, label in (
        (tag("np_type", name="float64"), "np_float64"),
        (tag("dtype", name="float64"), "tf_float64"),
        ("float16", "str_float16"),
        (tag("np_type", name="int64"), "np_int64"),
    ):
        cfg(
            f"table_dtype_{label}",
            "§1.1",
            "TableConfig",
            5,
            4,
            dtype=d,
            spec=VE,
            keywords=("dtype",),
        )
    cfg("table_optimizer_unchecked", "§1.1", "TableConfig", 5, 4, optimizer="sgd")
    cfg("table_name_unchecked", "§1.1", "TableConfig", 5, 4, name=123)
    cfg(
        "table_check_order_vocab_before_dim",
        "§1.1",
        "TableConfig",
        0,
        0,
        spec=VE,
        keywords=("vocabulary_size",),
    )
    cfg(
        "table_check_order_dim_before_combiner",
        "§1.1",
        "TableConfig",
        5,
        0,
        combiner="x",
        spec=VE,
        keywords=("dim",),
    )
    cfg(
        "table_check_order_initializer_before_combiner",
        "§1.1",
        "TableConfig",
        5,
        4,
        initializer=3,
        combiner="x",
        spec=VE,
        keywords=("initializer",),
    )
    cfg(
        "table_check_order_combiner_before_dtype",
        "§1.1",
        "TableConfig",
        5,
        4,
        combiner="x",
        dtype=tag("np_type", name="float64"),
        spec=VE,
        keywords=("combiner",),
    )
    cfg(
        "table_identity_not_equal",
        "§1.3",
        "TableConfig",
        5,
        4,
        op="eq",
        other={"target": "TableConfig", "args": [5, 4], "kwargs": {}},
    )
    # FeatureConfig
    tp = {"p": rowid_table()}
    P = tag("table", ref="p")  # noqa: N806
    cfg("feature_minimal", "§1.2", "FeatureConfig", P, tables=tp)
    cfg(
        "feature_all_args",
        "§1.2",
        "FeatureConfig",
        P,
        tables=tp,
        max_sequence_length=3,
        validate_weights_and_indices=False,
        output_shape=tag("list", items=[2, 3]),
        name="f",
    )
    cfg("feature_table_not_tableconfig", "§1.2", "FeatureConfig", "t", spec=VE, keywords=("table",))
    cfg("feature_table_none", "§1.2", "FeatureConfig", None, spec=VE, keywords=("table",))
    for v, label in (
        (-1, "negative"),
        (npi32, "np_int32"),
        (2.0, "float"),
        ("2", "str"),
        (None, "none"),
    ):
        cfg(
            f"feature_L_{label}",
            "§1.2",
            "FeatureConfig",
            P,
            tables=tp,
            max_sequence_length=v,
            spec=VE,
            keywords=("max_sequence_length",),
        )
    cfg("feature_L_true_accepted", "§1.2", "FeatureConfig", P, tables=tp, max_sequence_length=True)
    for v, label in ((1, "int"), (None, "none"), ("yes", "str")):
        cfg(
            f"feature_validate_{label}",
            "§1.2",
            "FeatureConfig",
            P,
            tables=tp,
            validate_weights_and_indices=v,
            spec=VE,
            keywords=("validate_weights_and_indices",),
        )
    for v, label in (
        (tag("list", items=[]), "empty_list"),
        (5, "int"),
        (tag("tuple", items=[2, 3]), "tuple"),
        (tag("list", items=[None, 2]), "none_dim"),
        (tag("tuple", items=[]), "empty_tuple"),
    ):
        cfg(f"feature_output_shape_{label}", "§1.2", "FeatureConfig", P, tables=tp, output_shape=v)
    cfg(
        "feature_output_shape_negative",
        "§1.2",
        "FeatureConfig",
        P,
        tables=tp,
        output_shape=tag("list", items=[-1]),
        spec=VE,
    )
    cfg(
        "feature_output_shape_str",
        "§1.2",
        "FeatureConfig",
        P,
        tables=tp,
        output_shape="ab",
        spec=err("TypeError"),
    )
    cfg("feature_name_stored", "§1.2", "FeatureConfig", P, tables=tp, name=17)
    # Optimizers
    for cls in ("SGD", "Adagrad", "AdagradMomentum", "Adam", "FTRL"):
        cfg(f"opt_{cls}_defaults", "§1.4", cls)
        cfg(f"opt_{cls}_clipvalue_scalar", "§1.4", cls, clipvalue=2.0)
        cfg(f"opt_{cls}_clipvalue_negative", "§1.4", cls, clipvalue=-2.0)
        cfg(f"opt_{cls}_clipvalue_tuple", "§1.4", cls, clipvalue=tag("tuple", items=[-1.0, 3.0]))
        cfg(
            f"opt_{cls}_clipvalue_3tuple",
            "§1.4",
            cls,
            clipvalue=tag("tuple", items=[1.0, 2.0, 3.0]),
            spec=VE,
        )
        cfg(
            f"opt_{cls}_clipvalue_list",
            "§1.4",
            cls,
            clipvalue=tag("list", items=[1.0, 2.0]),
            spec=err("TypeError"),
        )
        cfg(
            f"opt_{cls}_clipvalue_without_accumulation",
            "§1.4",
            cls,
            clipvalue=1.0,
            use_gradient_accumulation=False,
            spec=VE,
            keywords=("clipvalue",),
        )
        cfg(f"opt_{cls}_learning_rate_unchecked", "§1.4", cls, learning_rate="a")
        cfg(f"opt_{cls}_learning_rate_negative", "§1.4", cls, learning_rate=-1.0)
        cfg(
            f"opt_{cls}_learning_rate_callable",
            "§1.4",
            cls,
            learning_rate=tag("const_fn", value=0.25),
        )
        cfg(
            f"opt_{cls}_all_common_kwargs",
            "§1.4",
            cls,
            learning_rate=0.3,
            use_gradient_accumulation=False,
            clip_weight_min=-5.0,
            clip_weight_max=5.0,
            weight_decay_factor=0.01,
            multiply_weight_decay_factor_by_learning_rate=True,
            low_dimensional_packing_status=True,
        )
        if cls != "SGD":
            cfg(
                f"opt_{cls}_slot_fn_not_callable",
                "§1.4",
                cls,
                slot_variable_creation_fn=3,
                spec=VE,
                keywords=("slot_variable_creation_fn",),
            )
            cfg(
                f"opt_{cls}_slot_fn_check_before_clip_check",
                "§1.4",
                cls,
                clipvalue=1.0,
                use_gradient_accumulation=False,
                slot_variable_creation_fn=3,
                spec=VE,
                keywords=("slot_variable_creation_fn",),
            )
            specific: dict[str, Any] = {
                "Adagrad": {"initial_accumulator_value": 0.0},
                "AdagradMomentum": {"epsilon": 0.0},
                "Adam": {"beta_1": 1.0},
                "FTRL": {"initial_accumulator_value": 0.0},
            }[cls]
            cfg(
                f"opt_{cls}_clip_check_before_specific",
                "§1.4",
                cls,
                clipvalue=1.0,
                use_gradient_accumulation=False,
                spec=VE,
                keywords=("clipvalue",),
                **specific,
            )
    cfg("opt_SGD_positional", "§1.4", "SGD", 0.2, False, -1.0, 1.0, 0.1, True, None, True)
    cfg(
        "opt_SGD_slot_fn_unexpected_kwarg",
        "§1.4",
        "SGD",
        slot_variable_creation_fn=None,
        spec=err("TypeError"),
    )
    cfg("opt_Adagrad_positional", "§1.4", "Adagrad", 0.2, 0.5)
    for v, label in ((0.0, "zero"), (-0.1, "negative")):
        cfg(
            f"opt_Adagrad_initial_accumulator_{label}",
            "§1.4",
            "Adagrad",
            initial_accumulator_value=v,
            spec=VE,
            keywords=("initial_accumulator_value",),
        )
    cfg("opt_AdagradMomentum_all", "§1.4", "AdagradMomentum", 0.1, 0.9, True, 3, 0.5, 1e-5)
    cfg(
        "opt_AdagradMomentum_epsilon_zero",
        "§1.4",
        "AdagradMomentum",
        epsilon=0.0,
        spec=VE,
        keywords=("epsilon",),
    )
    cfg(
        "opt_AdagradMomentum_exponent_zero",
        "§1.4",
        "AdagradMomentum",
        exponent=0,
        spec=VE,
        keywords=("exponent",),
    )
    cfg(
        "opt_AdagradMomentum_epsilon_checked_first",
        "§1.4",
        "AdagradMomentum",
        epsilon=-1.0,
        exponent=0,
        spec=VE,
        keywords=("epsilon",),
    )
    cfg("opt_AdagradMomentum_unchecked", "§1.4", "AdagradMomentum", momentum=-3.0, beta2=7.0)
    cfg("opt_Adam_positional", "§1.4", "Adam", 0.1, 0.5, 0.6, 1e-3, False, False)
    for v, label in ((1.0, "one"), (-0.1, "negative")):
        cfg(f"opt_Adam_beta_1_{label}", "§1.4", "Adam", beta_1=v, spec=VE, keywords=("beta_1",))
        cfg(f"opt_Adam_beta_2_{label}", "§1.4", "Adam", beta_2=v, spec=VE, keywords=("beta_2",))
    cfg("opt_Adam_beta_1_zero_ok", "§1.4", "Adam", beta_1=0.0, beta_2=0.0)
    cfg("opt_Adam_epsilon_zero", "§1.4", "Adam", epsilon=0.0, spec=VE, keywords=("epsilon",))
    cfg(
        "opt_Adam_lazy_false_without_accumulation",
        "§1.4",
        "Adam",
        lazy_adam=False,
        use_gradient_accumulation=False,
        spec=VE,
        keywords=("lazy_adam",),
    )
    cfg("opt_Adam_lazy_false_with_accumulation", "§1.4", "Adam", lazy_adam=False)
    cfg(
        "opt_FTRL_all",
        "§1.4",
        "FTRL",
        0.1,
        0.5,
        -1.0,
        -2.0,
        0.3,
        0.2,
        True,
        None,
        None,
        None,
        None,
        None,
        None,
        True,
        True,
        False,
    )
    cfg(
        "opt_FTRL_initial_accumulator_zero",
        "§1.4",
        "FTRL",
        initial_accumulator_value=0.0,
        spec=VE,
        keywords=("initial_accumulator_value",),
    )
    cfg(
        "opt_FTRL_initial_accumulator_zero_allow_zero",
        "§1.4",
        "FTRL",
        initial_accumulator_value=0.0,
        allow_zero_accumulator=True,
        spec=VE,
        keywords=("initial_accumulator_value",),
    )
    # Optimizer equality and hashing.
    cfg(
        "opt_eq_same_values",
        "§1.3",
        "SGD",
        0.1,
        op="eq",
        other={"target": "SGD", "args": [0.1], "kwargs": {}},
    )
    cfg(
        "opt_eq_different_values",
        "§1.3",
        "SGD",
        0.1,
        op="eq",
        other={"target": "SGD", "args": [0.2], "kwargs": {}},
    )
    cfg(
        "opt_eq_different_classes",
        "§1.3",
        "SGD",
        op="eq",
        other={"target": "Adagrad", "args": [], "kwargs": {}},
    )
    cfg(
        "opt_eq_adam_same",
        "§1.3",
        "Adam",
        beta_1=0.5,
        op="eq",
        other={"target": "Adam", "args": [], "kwargs": {"beta_1": 0.5}},
    )
    cfg(
        "opt_eq_ftrl_different",
        "§1.3",
        "FTRL",
        beta=0.5,
        op="eq",
        other={"target": "FTRL", "args": [], "kwargs": {}},
    )
    cfg(
        "opt_hash_unhashable_attribute",
        "§1.3",
        "SGD",
        tag("list", items=[0.1]),
        op="hash",
        spec=err("TypeError"),
    )
    cfg("opt_hash_ok", "§1.3", "Adagrad", 0.1, op="hash")
    # QuantizationConfig
    cfg("quant_ok", "§1.5", "QuantizationConfig", 4, -1.0, 1.0)
    cfg("quant_lower_gt_upper_ok", "§1.5", "QuantizationConfig", 2, 1.0, -1.0)
    cfg("quant_float_buckets_ok", "§1.5", "QuantizationConfig", 2.5, 0.0, 1.0)
    cfg(
        "quant_one_bucket",
        "§1.5",
        "QuantizationConfig",
        1,
        0.0,
        1.0,
        spec=VE,
        keywords=("num_buckets",),
    )
    cfg(
        "quant_identity_not_equal",
        "§1.5",
        "QuantizationConfig",
        2,
        0.0,
        1.0,
        op="eq",
        other={"target": "QuantizationConfig", "args": [2, 0.0, 1.0], "kwargs": {}},
    )
    # RowIdInitializer
    f32 = tag("dtype", name="float32")
    cfg(
        "rowid_default",
        "§1.6",
        "RowIdInitializer",
        op="call",
        call_args=[tag("tuple", items=[3, 2])],
        call_kwargs={"dtype": f32},
    )
    cfg(
        "rowid_offset_negative",
        "§1.6",
        "RowIdInitializer",
        offset=-2,
        op="call",
        call_args=[tag("tuple", items=[3, 2])],
        call_kwargs={"dtype": f32},
    )
    cfg(
        "rowid_offset_fraction",
        "§1.6",
        "RowIdInitializer",
        offset=0.5,
        op="call",
        call_args=[tag("tuple", items=[3, 1]), f32],
    )
    cfg(
        "rowid_missing_dtype",
        "§1.6",
        "RowIdInitializer",
        op="call",
        call_args=[tag("tuple", items=[3, 2])],
        spec=err("TypeError"),
    )
    cfg("rowid_attributes", "§1.6", "RowIdInitializer", 4)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def write_json(path: Path, kind: str, cases: list[dict[str, Json]], extra: Json) -> None:
    """One case per line, sorted keys: deterministic and readable in diffs."""
    head = {
        "generator": "tools/make_fixtures.py",
        "kind": kind,
        "tensorflow_version": tf.__version__,
        "numpy_version": np.__version__,
        **extra,
    }
    lines = [
        '{"meta": ' + json.dumps(head, sort_keys=True, ensure_ascii=False) + ",",
        ' "cases": [',
    ]
    for i, c in enumerate(cases):
        sep = "," if i < len(cases) - 1 else ""
        lines.append(
            "  " + json.dumps(c, sort_keys=True, ensure_ascii=False, allow_nan=False) + sep
        )
    lines.append(" ]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def iter_mismatches(cases: list[dict[str, Json]]) -> Iterator[tuple[str, str]]:
    """(case name, mismatch text) for every case whose result contradicts SEMANTICS.md."""
    for c in cases:
        if "semantics_mismatch" in c:
            yield c["name"], c["semantics_mismatch"]


def main() -> int:
    """Define, run and write every case; print how TF differs from SEMANTICS.md."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        # TF prints Python sets in some messages ("Inputs keys are {'q', 'z'}"); their order
        # depends on string hashing, so pin it for byte-identical fixtures.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if tf.__version__ != TF_VERSION:
        print(f"expected TensorFlow {TF_VERSION}, found {tf.__version__}", file=sys.stderr)
        return 2
    tf.random.set_seed(0)
    define_lookup_cases()
    define_embedding_cases()
    define_config_cases()
    DATA_DIR.mkdir(parents=True, exist_ok=True)

    for case in LOOKUP_CASES:
        LOGS.messages.clear()
        case["expect"] = run_lookup(case)
        if LOGS.messages:
            case["tf_warnings"] = sorted(set(LOGS.messages))
        mismatch = check_spec(_SPECS[case["name"]], case["expect"])
        if mismatch:
            case["semantics_mismatch"] = mismatch
    for case in EMBEDDING_CASES:
        run_construct(case)
        spec = _SPECS[case["name"]]
        last = case["steps"][-1]["expect"]
        if spec is not None:
            got = last["error"]["tf_class"] if "error" in last else None
            if got != spec["error"]:
                case["semantics_mismatch"] = f"SEMANTICS predicts {spec['error']}, TF: {got}"
    for case in CONFIG_CASES:
        case["expect"] = run_config(case)
        spec = _SPECS[case["name"]]
        got = case["expect"]["error"]["tf_class"] if "error" in case["expect"] else None
        want = spec["error"] if spec else None
        if got != want:
            case["semantics_mismatch"] = f"SEMANTICS predicts {want or 'success'}, TF: " + (
                f"{got}: {case['expect']['error']['message'][:120]}" if got else "success"
            )

    write_json(DATA_DIR / "lookup_cases.json", "lookup", LOOKUP_CASES, {})
    write_json(DATA_DIR / "embedding_cases.json", "embedding", EMBEDDING_CASES, {})
    write_json(DATA_DIR / "config_cases.json", "config", CONFIG_CASES, {})

    all_cases = LOOKUP_CASES + EMBEDDING_CASES + CONFIG_CASES
    print(
        f"lookup: {len(LOOKUP_CASES)}  embedding: {len(EMBEDDING_CASES)}  "
        f"config: {len(CONFIG_CASES)} cases written to {DATA_DIR}"
    )
    mism = list(iter_mismatches(all_cases))
    print(f"{len(mism)} case(s) where TensorFlow {tf.__version__} differs from SEMANTICS.md:")
    for name, text in mism:
        print(f"  {name}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
