"""embserve reproduces every fixture that real TensorFlow 2.21 produced (``tests/data/*.json``).

The fixtures are made by ``tools/make_fixtures.py`` in a separate TensorFlow venv; this module
never imports TensorFlow. Each JSON case is rebuilt with embserve objects (``es.TableConfig``,
numpy arrays for dense ids, ``es.SparseTensor``, ``es.RaggedTensor``) and must give TensorFlow's
result: outputs with the same structure, shape and dtype and values within 1e-6, or an error of
the mapped class:

==========================  ===========================================================
TensorFlow raised           embserve must raise
==========================  ===========================================================
``ValueError``              a ``ValueError``
``TypeError``               a ``TypeError``
``KeyError``                a ``KeyError``
``AttributeError``          ``es.FeatureConfigTypeError`` (a non-FeatureConfig leaf)
``InvalidArgumentError``    ``es.InputError``; ``es.IdOutOfRangeError`` for a bad id, with
                            TensorFlow's id, table size and the feature path as attributes
==========================  ===========================================================

Where a case lists ``embserve_keywords``, the message must contain them (e.g. the feature path),
because an error that does not say *which* feature failed is not actionable.

Deliberate differences from TensorFlow are listed, with their reason, in
:data:`DELIBERATE_DIFFERENCES`; a meta-test keeps that dict in step with the fixtures.
"""

from __future__ import annotations

import collections
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es

DATA = Path(__file__).parent / "data"
RTOL = 1e-6
ATOL = 1e-6

_NON_FINITE_WEIGHTS = (
    "embserve rejects NaN and ±inf weights with es.InputError on every path (TensorFlow lets them "
    "propagate, or silently drops NaN on the validated mean/sqrtn path): a non-finite weight is "
    "corrupt input, and serving a NaN embedding hides it."
)

#: Case name -> why embserve deliberately differs. Every listed case must raise es.InputError.
DELIBERATE_DIFFERENCES: dict[str, str] = {
    "sparse_valid_sum_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "sparse_valid_mean_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "sparse_valid_sqrtn_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "sparse_valid_sum_weights_neg_inf": _NON_FINITE_WEIGHTS,
    "sparse_valid_mean_weights_neg_inf": _NON_FINITE_WEIGHTS,
    "sparse_valid_sqrtn_weights_neg_inf": _NON_FINITE_WEIGHTS,
    "sparse_plain_sum_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "sparse_plain_mean_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "sparse_plain_sqrtn_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "ragged_sum_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "ragged_mean_weights_nan_inf": _NON_FINITE_WEIGHTS,
    "ragged_sqrtn_weights_nan_inf": _NON_FINITE_WEIGHTS,
}

_LIST_IDS = (
    "embserve takes a Python list (or int) sitting at a feature's own path as that feature's dense "
    "ids, as np.asarray would read it; TensorFlow treats the list as more structure (or rejects "
    "the int) and raises ValueError. Nothing that works in TensorFlow changes meaning."
)

#: Case name -> (why embserve returns a result where TensorFlow raises, the expected result).
#: The tables of these cases are row-id tables (row r is [r, r]).
EXTENSIONS: dict[str, tuple[str, Any]] = {
    "struct_lone_config_list_input": (_LIST_IDS, np.array([[[1, 1], [2, 2]]], np.float32)),
    "struct_python_list_is_structure": (_LIST_IDS, {"f": np.array([[1, 1], [2, 2]], np.float32)}),
    "struct_leaf_python_int": (_LIST_IDS, {"f": np.array([3, 3], np.float32)}),
}

Json = Any


# ---------------------------------------------------------------------------------------------
# Loading


def _load(name: str) -> dict[str, Json]:
    with (DATA / name).open(encoding="utf-8") as f:
        return json.load(f)


LOOKUP = _load("lookup_cases.json")
EMBEDDING = _load("embedding_cases.json")
CONFIG = _load("config_cases.json")


def _params(data: dict[str, Json]) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in data["cases"]]


# ---------------------------------------------------------------------------------------------
# Decoding JSON into embserve objects


def _number(v: float | int | str) -> float | int:
    """A JSON number, or one of the strings "nan", "inf", "-inf"."""
    return float(v) if isinstance(v, str) else v


def _array(d: Json) -> np.ndarray:
    """An ``array`` / ``dense`` leaf as a numpy array of its dtype and shape."""
    return np.array([_number(v) for v in d["values"]], dtype=d["dtype"]).reshape(d["shape"])


_NAMEDTUPLES: dict[tuple[str, tuple[str, ...]], type] = {}


def _namedtuple(name: str, fields: list[str]) -> type:
    """One class per (name, fields), shared by config, inputs and expected outputs."""
    key = (name, tuple(fields))
    if key not in _NAMEDTUPLES:
        _NAMEDTUPLES[key] = collections.namedtuple(name, fields)
    return _NAMEDTUPLES[key]


def _struct(d: Json, leaf: Callable[[Json], Any]) -> Any:
    """Rebuild a tagged structure, turning each leaf with ``leaf``."""
    t = d["type"]
    if t == "none":
        return None
    if t == "dict":
        return {k: _struct(v, leaf) for k, v in d["items"]}
    if t == "list":
        return [_struct(v, leaf) for v in d["items"]]
    if t == "tuple":
        return tuple(_struct(v, leaf) for v in d["items"])
    if t == "namedtuple":
        return _namedtuple(d["name"], d["fields"])(*[_struct(v, leaf) for v in d["items"]])
    return leaf(d)


def _initializer(spec: Json) -> Any:
    """The table initializer a JSON spec describes (None: embserve's default)."""
    if spec is None:
        return None
    if spec["type"] == "rowid":
        return es.RowIdInitializer(offset=spec["offset"])
    if spec["type"] == "values":
        values = _array(spec)

        def init(shape: Any, dtype: Any = None) -> np.ndarray:
            return values.copy()

        return init
    if spec["type"] == "no_dtype_kwarg":

        def init_no_dtype(shape: Any) -> np.ndarray:
            return np.zeros(shape, np.float32)

        return init_no_dtype
    raise AssertionError(f"unknown initializer {spec}")


def _optimizer(spec: Json) -> Any:
    """An embserve optimizer from its spec; plain JSON values are passed as (bad) optimizers."""
    if isinstance(spec, dict) and spec.get("type") == "optimizer":
        return getattr(es, spec["class"])(**spec["kwargs"])
    return spec


def _tables(specs: dict[str, Json]) -> dict[str, Any]:
    """The case's TableConfigs, by reference."""
    out = {}
    for ref, s in specs.items():
        kwargs: dict[str, Any] = {
            "initializer": _initializer(s["initializer"]),
            "optimizer": _optimizer(s["optimizer"]),
            "combiner": s["combiner"],
            "name": s["name"],
        }
        if "dtype" in s:
            kwargs["dtype"] = np.dtype(s["dtype"]).type
        if "quantization_config" in s:
            kwargs["quantization_config"] = es.QuantizationConfig(*s["quantization_config"])
        out[ref] = es.TableConfig(s["vocabulary_size"], s["dim"], **kwargs)
    return out


def _feature_config(d: Json, tables: dict[str, Any]) -> Any:
    """The feature_config structure (bad leaves kept as they are)."""

    def leaf(x: Json) -> Any:
        if x["type"] == "feature":
            return es.FeatureConfig(
                tables[x["table"]],
                max_sequence_length=x["max_sequence_length"],
                validate_weights_and_indices=x["validate_weights_and_indices"],
                output_shape=x["output_shape"],
                name=x["name"],
            )
        if x["type"] == "table_leaf":
            return tables[x["table"]]
        if x["type"] in ("pyint", "pystr"):
            return x["value"]
        raise AssertionError(f"unknown feature leaf {x}")

    return _struct(d, leaf)


def _input_leaf(d: Json) -> Any:
    """Ids or weights: numpy array (dense), es.SparseTensor or es.RaggedTensor."""
    t = d["type"]
    if t == "dense":
        return _array(d)
    if t == "sparse":
        rank = len(d["dense_shape"])
        indices = np.array(d["indices"], dtype=np.int64).reshape(-1, rank)
        values = np.array([_number(v) for v in d["values"]], dtype=d["dtype"])
        return es.SparseTensor(indices, values, np.array(d["dense_shape"], dtype=np.int64))
    if t == "ragged":
        rt: Any = np.array([_number(v) for v in d["values"]], dtype=d["dtype"])
        for splits in reversed(d["nested_row_splits"]):
            rt = es.RaggedTensor.from_row_splits(rt, np.array(splits, dtype=d["splits_dtype"]))
        return rt
    if t in ("pyint", "pystr"):
        return d["value"]
    raise AssertionError(f"unknown input leaf {d}")


def _inputs(d: Json) -> Any:
    return _struct(d, _input_leaf)


# ---------------------------------------------------------------------------------------------
# Checking results


def _expected_error_class(err: Json) -> type[BaseException]:
    """The embserve class standing in for the TensorFlow error (see the module docstring)."""
    cls = err["tf_class"]
    if cls == "InvalidArgumentError":
        return es.IdOutOfRangeError if err.get("category") == "id_out_of_range" else es.InputError
    if cls == "AttributeError":
        return es.FeatureConfigTypeError
    return {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError}[cls]


def _check_error(exc: BaseException, case: Json, err: Json) -> None:
    """Class, id attributes and message keywords of an error embserve raised."""
    want = _expected_error_class(err)
    assert isinstance(exc, want), (
        f"TF raised {err['tf_class']} ({err['message'][:200]!r}); embserve must raise "
        f"{want.__name__}, got {type(exc).__name__}: {exc}"
    )
    if isinstance(exc, es.IdOutOfRangeError):
        assert exc.id == err["id"], f"bad id: TF {err['id']}, embserve {exc.id}"
        assert exc.num_rows == err["num_rows"], (err["num_rows"], exc.num_rows)
        if "bad_feature" in case:
            assert exc.feature == case["bad_feature"], (case["bad_feature"], exc.feature)
    for word in case.get("embserve_keywords", []):
        assert word in str(exc), f"message {str(exc)!r} does not mention {word!r}"


def _compare(expected: Json, actual: Any, path: str = "") -> None:
    """Structure (container types, keys), then every leaf: ndarray, dtype, shape, values."""
    t = expected["type"]
    where = path or "<root>"
    if t == "array":
        assert isinstance(actual, np.ndarray), f"{where}: expected ndarray, got {type(actual)}"
        want = _array(expected)
        assert actual.dtype == want.dtype, f"{where}: dtype {actual.dtype}, TF {want.dtype}"
        assert actual.shape == want.shape, f"{where}: shape {actual.shape}, TF {want.shape}"
        np.testing.assert_allclose(
            actual, want, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=f"at {where}"
        )
        return
    if t == "none":
        assert actual is None, f"{where}: expected None, got {actual!r}"
        return
    if t == "dict":
        assert isinstance(actual, dict), f"{where}: expected dict, got {type(actual)}"
        keys = [k for k, _ in expected["items"]]
        assert sorted(map(str, actual)) == sorted(map(str, keys)), (
            f"{where}: keys {list(actual)}, TF {keys}"
        )
        for k, v in expected["items"]:
            _compare(v, actual[k], f"{path}/{k}" if path else str(k))
        return
    if t == "namedtuple":
        cls = _namedtuple(expected["name"], expected["fields"])
        assert type(actual) is cls, f"{where}: expected {cls.__name__}, got {type(actual)}"
    elif t == "tuple":
        assert type(actual) is tuple, f"{where}: expected tuple, got {type(actual)}"
    elif t == "list":
        assert type(actual) is list, f"{where}: expected list, got {type(actual)}"
    assert len(actual) == len(expected["items"]), f"{where}: length {len(actual)}"
    for i, (v, a) in enumerate(zip(expected["items"], actual, strict=True)):
        _compare(v, a, f"{path}/{i}" if path else str(i))


def _has_non_finite_weights(case: Json) -> bool:
    """Whether any weight value of a lookup case is NaN or ±inf."""
    if "weights" not in case:
        return False

    def walk(d: Json) -> Iterator[Json]:
        if d["type"] in ("dict", "list", "tuple", "namedtuple"):
            for item in d["items"]:
                yield from walk(item[1] if d["type"] == "dict" else item)
        else:
            yield d

    return any(isinstance(v, str) for leaf in walk(case["weights"]) for v in leaf.get("values", []))


# ---------------------------------------------------------------------------------------------
# Lookups


def _run_lookup(case: Json) -> Any:
    """Build everything from the JSON and run the lookup the case describes."""
    tables = _tables(case["tables"])
    config = _feature_config(case["feature_config"], tables)
    features = _inputs(case["features"])
    has_weights = "weights" in case
    weights = _inputs(case["weights"]) if has_weights else None
    if case["api"] == "embedding":
        emb = es.TPUEmbeddingForServing(config, _optimizer(case["optimizer"]))
        fn = emb if case["call"] == "__call__" else emb.embedding_lookup
        return fn(features, weights) if has_weights else fn(features)
    arrays = {ref: _array(a) for ref, a in case["lookup_tables"].items()}
    if case["lookup_tables_key"] == "config":
        tmap: dict[Any, np.ndarray] = {tables[r]: a for r, a in arrays.items()}
    else:
        tmap = {tables[r].name: a for r, a in arrays.items()}
    return es.serving_embedding_lookup(features, weights, tmap, config)


@pytest.mark.parametrize("case", _params(LOOKUP))
def test_lookup_case(case: Json) -> None:
    """One TensorFlow lookup case: same outputs, or the mapped error."""
    with warnings.catch_warnings():
        # TF logs warnings on some paths (e.g. an ignored max_sequence_length); embserve may
        # warn there too. Outputs and errors are what this test pins.
        warnings.simplefilter("ignore")
        if case["name"] in DELIBERATE_DIFFERENCES:
            with pytest.raises(es.InputError):
                _run_lookup(case)
            return
        if case["name"] in EXTENSIONS:
            assert "error" in case["expect"], "TensorFlow now accepts this case: drop the entry"
            expected = EXTENSIONS[case["name"]][1]
            out = _run_lookup(case)
            flat_out = out if isinstance(out, np.ndarray) else out["f"]
            flat_exp = expected if isinstance(expected, np.ndarray) else expected["f"]
            assert flat_out.dtype == np.float32
            np.testing.assert_array_equal(flat_out, flat_exp)
            return
        expect = case["expect"]
        if "error" in expect:
            with pytest.raises(Exception) as info:  # noqa: PT011 - the class is checked below
                _run_lookup(case)
            _check_error(info.value, case, expect["error"])
            return
        out = _run_lookup(case)
    _compare(expect["output"], out)


# ---------------------------------------------------------------------------------------------
# TPUEmbeddingForServing construction


def _check_table_value(expected: Json, actual: Any, where: str) -> None:
    """Exact values, or for TF's unseeded default initializer its specified distribution."""
    arr = np.asarray(actual)
    if expected["type"] != "truncated_normal":
        _compare(expected, arr, where)
        return
    assert arr.dtype == np.float32, f"{where}: dtype {arr.dtype}"
    assert list(arr.shape) == expected["shape"], f"{where}: shape {arr.shape}"
    stddev = expected["stddev"]
    assert np.all(np.abs(arr) <= 2 * stddev), f"{where}: values beyond two stddevs"
    # 32000 draws: the sample std and mean are within ~0.003 of TF's observed ones.
    assert abs(arr.std() - expected["observed_std"]) < 0.01, (arr.std(), expected)
    assert abs(arr.mean() - expected["observed_mean"]) < 0.01, (arr.mean(), expected)


def _check_stored_optimizer(expected: Json, actual: Any, where: str) -> None:
    """An optimizer TF left on a TableConfig: None, a bad plain value, or class + attributes."""
    if not isinstance(expected, dict):
        assert actual == expected, f"{where}: optimizer {actual!r}, TF {expected!r}"
        return
    assert type(actual).__name__ == expected["class"], f"{where}: optimizer {actual!r}"
    _check_attributes(expected["attributes"], actual, where)


def _check_step(step: Json, emb: Any, tables: dict[str, Any]) -> None:
    """embedding_tables (order, keys, names, values) and variables after a successful build."""
    expect = step["expect"]
    items = list(emb.embedding_tables.items())
    want = expect["embedding_tables"]
    assert [k for k, _ in items] == [tables[t["table"]] for t in want], (
        "embedding_tables keys (by identity, in order) differ: "
        f"{[getattr(k, 'name', k) for k, _ in items]} vs TF {[t['name'] for t in want]}"
    )
    by_name = {}
    for (key, value), w in zip(items, want, strict=True):
        assert key.name == w["name"], (key.name, w["name"])
        _check_table_value(w["value"], value, f"embedding_tables[{w['name']}]")
        by_name[w["name"]] = value
    variables = emb.variables
    assert {type(k).__name__ for k in variables} == set(expect["variables_key_types"]) or (
        not variables and not expect["variables_key_types"]
    ), f"variables keys {list(variables)}: TF keys them by table name"
    assert set(variables) == set(expect["variables"]), (list(variables), list(expect["variables"]))
    for name, slots in expect["variables"].items():
        got = variables[name]
        assert set(got) == set(slots), f"{name}: slots {sorted(got)}, TF {sorted(slots)}"
        for slot, spec in slots.items():
            arr = np.asarray(got[slot])
            where = f"variables[{name!r}][{slot!r}]"
            assert arr.dtype.name == spec["dtype"], f"{where}: dtype {arr.dtype}"
            assert list(arr.shape) == spec["shape"], f"{where}: shape {arr.shape}"
            if slot == "parameters":
                assert spec["is_embedding_table"]
                assert np.shares_memory(arr, np.asarray(by_name[name])), (
                    f"{where} is not the table in embedding_tables"
                )
            elif "fill" in spec:
                np.testing.assert_allclose(arr, _number(spec["fill"]), rtol=RTOL, atol=ATOL)
            else:
                np.testing.assert_allclose(arr, _array({**spec, "type": "array"}), RTOL, ATOL)


def _check_tables_after(expect: Json, tables: dict[str, Any]) -> None:
    """TF writes auto names and the global optimizer onto the user's TableConfigs."""
    for ref, after in expect["tables_after"].items():
        tc = tables[ref]
        assert tc.name == after["name"], f"table {ref}: name {tc.name!r}, TF {after['name']!r}"
        _check_stored_optimizer(after["optimizer"], tc.optimizer, f"table {ref}")


@pytest.mark.parametrize("case", _params(EMBEDDING))
def test_embedding_case(case: Json) -> None:
    """Construction, build, embedding_tables, variables and TableConfig mutation."""
    tables = _tables(case["tables"])
    config = _feature_config(case["feature_config"], tables)
    emb = None
    for step in case["steps"]:
        expect = step["expect"]
        err = expect.get("error")

        def construct(step: Json = step) -> Any:
            if step["optimizer"] == "omit":
                return es.TPUEmbeddingForServing(config)  # type: ignore[call-arg]
            return es.TPUEmbeddingForServing(config, _optimizer(step["optimizer"]))

        if err is not None and err["stage"] == "construct":
            with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
                construct()
            _check_error(info.value, case, err)
        else:
            emb = construct()
            if err is not None:
                with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
                    emb.build()
                _check_error(info.value, case, err)
            else:
                emb.build()
                _check_step(step, emb, tables)
        _check_tables_after(expect, tables)
    for lk in case.get("lookups", []):
        assert emb is not None
        _compare(lk["expect"]["output"], emb(_inputs(lk["features"])))


# ---------------------------------------------------------------------------------------------
# Config constructors


def _arg(v: Json, tables: dict[str, Any]) -> Any:
    """A config-case argument as the embserve-side Python value."""
    if not isinstance(v, dict):
        return v
    t = v["type"]
    if t == "float":
        return float(v["value"])
    if t == "np_scalar":
        return np.dtype(v["dtype"]).type(v["value"])
    if t in ("np_type", "dtype"):  # embserve has no tf.DType: the numpy scalar type stands in
        return np.dtype(v["name"]).type
    if t == "tuple":
        return tuple(_arg(x, tables) for x in v["items"])
    if t == "list":
        return [_arg(x, tables) for x in v["items"]]
    if t == "table":
        return tables[v["ref"]]
    if t == "rowid":
        return es.RowIdInitializer(offset=v["offset"])
    if t == "const_fn":
        value = v["value"]
        return lambda: value
    if t == "optimizer":
        return getattr(es, v["class"])(**{k: _arg(x, tables) for k, x in v["kwargs"].items()})
    if t == "quantization":
        return es.QuantizationConfig(v["num_buckets"], v["lower"], v["upper"])
    raise AssertionError(f"unknown argument tag {v}")


def _same_value(expected: Json, actual: Any, where: str) -> None:
    """One stored attribute against TF's encoded one."""
    if isinstance(expected, bool):
        assert actual is expected or (type(actual) is bool and actual == expected), (
            f"{where}: {actual!r}, TF {expected!r}"
        )
        return
    if expected is None or isinstance(expected, str):
        assert actual == expected, f"{where}: {actual!r}, TF {expected!r}"
        return
    if isinstance(expected, int | float):
        assert not isinstance(actual, bool) or isinstance(expected, bool), where
        assert actual == expected, f"{where}: {actual!r}, TF {expected!r}"
        return
    t = expected["type"]
    if t == "float":
        want = float(expected["value"])
        assert (math.isnan(want) and math.isnan(actual)) or actual == want, where
    elif t == "np_scalar":
        assert actual == expected["value"], f"{where}: {actual!r}, TF {expected!r}"
    elif t == "dtype":
        assert np.dtype(actual) == np.dtype(expected["name"]), f"{where}: {actual!r}"
    elif t == "shape":
        if expected["dims"] is None:
            assert actual is None, f"{where}: {actual!r}, TF unknown shape (None)"
        else:
            assert isinstance(actual, tuple), f"{where}: {actual!r} should be a tuple"
            assert list(actual) == expected["dims"], f"{where}: {actual!r}, TF {expected}"
    elif t in ("tuple", "list"):
        assert isinstance(actual, tuple if t == "tuple" else list), f"{where}: {actual!r}"
        assert len(actual) == len(expected["items"]), where
        for i, (e, a) in enumerate(zip(expected["items"], actual, strict=True)):
            _same_value(e, a, f"{where}[{i}]")
    elif t == "callable":
        assert callable(actual), f"{where}: {actual!r} is not callable"
    elif t == "table_config":
        assert isinstance(actual, es.TableConfig), f"{where}: {actual!r}"
    elif t == "quantization":
        assert isinstance(actual, es.QuantizationConfig), f"{where}: {actual!r}"
        for k in ("num_buckets", "lower", "upper"):
            _same_value(expected[k], getattr(actual, k), f"{where}.{k}")
    elif t == "optimizer":
        _check_stored_optimizer(expected, actual, where)
    else:
        raise AssertionError(f"unknown attribute tag {expected}")


def _check_attributes(expected: dict[str, Json], obj: Any, where: str) -> None:
    for name, value in expected.items():
        assert hasattr(obj, name), f"{where}: no attribute {name!r}"
        _same_value(value, getattr(obj, name), f"{where}.{name}")


@pytest.mark.parametrize("case", _params(CONFIG))
def test_config_case(case: Json) -> None:
    """A config constructor (or equality, hashing, calling) gives TF's result or error."""
    tables = _tables(case["tables"])

    def build(target: str, args: list[Json], kwargs: dict[str, Json]) -> Any:
        return getattr(es, target)(
            *[_arg(a, tables) for a in args], **{k: _arg(v, tables) for k, v in kwargs.items()}
        )

    def run() -> Any:
        obj = build(case["target"], case["args"], case["kwargs"])
        op = case["op"]
        if op == "construct":
            return obj
        if op == "eq":
            o = case["other"]
            return obj, build(o["target"], o["args"], o["kwargs"])
        if op == "hash":
            return hash(obj)
        if op == "call":
            return obj(
                *[_arg(a, tables) for a in case["call_args"]],
                **{k: _arg(v, tables) for k, v in case["call_kwargs"].items()},
            )
        raise AssertionError(op)

    expect = case["expect"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a TableConfig without a name may warn, as TF logs
        if "error" in expect:
            with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
                run()
            _check_error(info.value, case, expect["error"])
            return
        result = run()
    op = case["op"]
    if op == "construct":
        _check_attributes(expect["attributes"], result, case["target"])
        if "repr" in expect:
            assert repr(result) == expect["repr"]
    elif op == "eq":
        a, b = result
        assert (a == b) is expect["eq"]
        assert (a != b) is expect["ne"]
        if expect["eq"]:
            assert hash(a) == hash(b)
    elif op == "hash":
        assert expect["hashable"]
    elif op == "call":
        _compare(expect["result"], np.asarray(result))


# ---------------------------------------------------------------------------------------------
# The fixtures themselves


def test_fixtures_come_from_tensorflow_2_21() -> None:
    """The files were made by tools/make_fixtures.py with TensorFlow 2.21.0."""
    for data in (LOOKUP, EMBEDDING, CONFIG):
        assert data["meta"]["tensorflow_version"] == "2.21.0"
        assert data["meta"]["generator"] == "tools/make_fixtures.py"
        names = [c["name"] for c in data["cases"]]
        assert len(names) == len(set(names))


def test_deliberate_differences_are_exactly_the_non_finite_weight_cases() -> None:
    """Every listed difference is a real case, and every NaN/inf-weight case is listed."""
    names = {c["name"] for c in LOOKUP["cases"]}
    assert set(DELIBERATE_DIFFERENCES) <= names
    non_finite = {c["name"] for c in LOOKUP["cases"] if _has_non_finite_weights(c)}
    assert non_finite == set(DELIBERATE_DIFFERENCES)
    assert set(EXTENSIONS) <= names


def test_variables_are_keyed_by_table_name_in_tensorflow() -> None:
    """TF 2.21 keys ``variables`` by table name (str), not by TableConfig (recorded fact)."""
    kinds = {
        k
        for c in EMBEDDING["cases"]
        for s in c["steps"]
        for k in s["expect"].get("variables_key_types", [])
    }
    assert kinds == {"str"}
