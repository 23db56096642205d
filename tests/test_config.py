"""TableConfig, FeatureConfig, QuantizationConfig, RowIdInitializer and the default initializer.

Every case pins TensorFlow 2.21's behaviour (SEMANTICS.md §1.1, §1.2, §1.3, §1.5, §1.6, §2.4):
error class, key words of the message, check order, stored values, reprs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from embserve.config import (
    FeatureConfig,
    QuantizationConfig,
    RowIdInitializer,
    TableConfig,
    TruncatedNormal,
)
from embserve.errors import ConfigError
from embserve.optimizers import SGD, Adam


class FakeDType:
    """Stands in for a ``tf.DType``: ``as_datatype_enum`` and ``as_numpy_dtype``."""

    def __init__(self, enum: int, numpy_type: type) -> None:
        self.as_datatype_enum = enum
        self.as_numpy_dtype = numpy_type


class NumpyOnlyDType:
    """A dtype look-alike with only ``as_numpy_dtype``."""

    def __init__(self, numpy_type: type) -> None:
        self.as_numpy_dtype = numpy_type


class FakeTensorShape:
    """Stands in for a ``tf.TensorShape``: ``rank`` and ``as_list()``."""

    def __init__(self, dims: list[int | None] | None) -> None:
        self._dims = dims
        self.rank = None if dims is None else len(dims)

    def as_list(self) -> list[int | None]:
        if self._dims is None:
            raise ValueError("as_list() is not defined on an unknown TensorShape.")
        return list(self._dims)


def table(**kwargs: Any) -> TableConfig:
    return TableConfig(10, 2, **kwargs)


# --- TableConfig ----------------------------------------------------------------------------


def test_table_config_defaults() -> None:
    t = TableConfig(5, 4)
    assert (t.vocabulary_size, t.dim) == (5, 4)
    assert t.optimizer is None
    assert t.combiner == "mean"
    assert t.name is None
    assert t.quantization_config is None
    assert t.layout is None
    assert t.dtype is np.float32
    assert isinstance(t.initializer, TruncatedNormal)
    assert t.initializer.mean == 0.0
    assert t.initializer.stddev == pytest.approx(0.5)


@pytest.mark.parametrize("dim", [1, 3, 4, 16, 100])
def test_default_initializer_stddev_is_inverse_sqrt_dim(dim: int) -> None:
    init = TableConfig(5, dim).initializer
    assert isinstance(init, TruncatedNormal)
    assert init.mean == 0.0
    assert init.stddev == pytest.approx(1 / math.sqrt(dim))
    assert init.seed is None


def test_table_config_stores_arguments_positionally() -> None:
    opt = SGD(0.2)
    q = QuantizationConfig(2, 0.0, 1.0)
    init = RowIdInitializer()
    layout = object()
    t = TableConfig(7, 3, init, opt, "sum", "t", q, layout, "int32")
    assert (t.vocabulary_size, t.dim) == (7, 3)
    assert t.initializer is init
    assert t.optimizer is opt
    assert t.combiner == "sum"
    assert t.name == "t"
    assert t.quantization_config is q
    assert t.layout is layout
    assert t.dtype == "int32"


@pytest.mark.parametrize("value", [0, -1, 2.0, np.int64(5), np.int32(5), "5", None, [5]])
def test_vocabulary_size_must_be_a_positive_python_int(value: Any) -> None:
    with pytest.raises(
        ConfigError,
        match=r"Argument `vocabulary_size` must be an int and must be >= 1\. Received: ",
    ):
        TableConfig(value, 4)


@pytest.mark.parametrize("value", [0, -3, 2.0, np.int64(4), "4", None])
def test_dim_must_be_a_positive_python_int(value: Any) -> None:
    with pytest.raises(
        ConfigError,
        match=r"Argument `dim` \(embedding dimension\) must be an int and must be >= 1\. Received",
    ):
        TableConfig(5, value)


def test_bool_is_an_int() -> None:
    t = TableConfig(True, True)
    assert t.vocabulary_size is True
    assert t.dim is True


def test_received_value_is_printed() -> None:
    with pytest.raises(ConfigError, match=r"Received: 5$"):
        TableConfig(np.int64(5), 4)
    with pytest.raises(ConfigError, match=r"Received: 4$"):
        TableConfig(5, "4")


@pytest.mark.parametrize("value", [3, "x", 0.5])
def test_initializer_must_be_callable_or_none(value: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"Argument `initializer` must be a callable \(or None\)\. Received: "
    ):
        TableConfig(5, 4, initializer=value)


@pytest.mark.parametrize("combiner", ["mean", "sum", "sqrtn"])
def test_valid_combiners(combiner: str) -> None:
    assert table(combiner=combiner).combiner == combiner


@pytest.mark.parametrize("combiner", ["SUM", "Mean", "max", ""])
def test_unknown_string_combiner(combiner: str) -> None:
    with pytest.raises(ConfigError) as info:
        table(combiner=combiner)
    assert str(info.value) == (
        f"String argument `combiner` must be in ('mean', 'sum', 'sqrtn'). Received: {combiner}"
    )


@pytest.mark.parametrize(("combiner", "shown"), [(None, "NoneType"), (3, "int"), (["sum"], "list")])
def test_non_string_combiner(combiner: Any, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        table(combiner=combiner)
    assert str(info.value) == (
        "Argument `combiner` should either be a str or a CustomCombiner. "
        f"Received: <class '{shown}'>"
    )


ACCEPTED_DTYPES = [
    pytest.param(np.float32, id="np.float32"),
    pytest.param(np.int32, id="np.int32"),
    pytest.param("float32", id="str-float32"),
    pytest.param("int32", id="str-int32"),
    pytest.param("float", id="str-float"),
    pytest.param(float, id="python-float"),
    pytest.param(np.dtype("float32"), id="np.dtype-float32"),
    pytest.param(np.dtype(">f4"), id="np.dtype-big-endian"),
    pytest.param(np.dtype("int32"), id="np.dtype-int32"),
    pytest.param(1, id="enum-1"),
    pytest.param(3, id="enum-3"),
    pytest.param(True, id="True-is-1"),
    pytest.param(np.float32(1.0), id="np.float32-scalar-hashing-as-1"),
    pytest.param(np.float32(0.5), id="np.float32-scalar-by-dtype"),
    pytest.param(np.zeros(2, np.float32), id="array-by-dtype"),
    pytest.param(FakeDType(1, np.float32), id="tf.float32"),
    pytest.param(FakeDType(3, np.int32), id="tf.int32"),
    pytest.param(NumpyOnlyDType(np.float32), id="as_numpy_dtype-only"),
]


@pytest.mark.parametrize("dtype", ACCEPTED_DTYPES)
def test_accepted_dtypes_are_stored_unconverted(dtype: Any) -> None:
    assert table(dtype=dtype).dtype is dtype


REJECTED_DTYPES = [
    pytest.param(np.float64, id="np.float64"),
    pytest.param(np.int64, id="np.int64"),
    pytest.param(np.float16, id="np.float16"),
    pytest.param("float64", id="str-float64"),
    pytest.param("f4", id="str-f4"),
    pytest.param("half", id="str-half"),
    pytest.param("int", id="str-int"),
    pytest.param("tf.float32", id="str-tf.float32"),
    pytest.param(b"float32", id="bytes"),
    pytest.param(int, id="python-int"),
    pytest.param(None, id="None"),
    pytest.param(2, id="enum-2-float64"),
    pytest.param(101, id="enum-101-float32_ref"),
    pytest.param(np.float32(2.0), id="np.float32-scalar-hashing-as-2"),
    pytest.param(np.dtype("float64"), id="np.dtype-float64"),
    pytest.param(FakeDType(2, np.float64), id="tf.float64"),
    pytest.param(FakeDType(101, np.float32), id="tf.float32_ref"),
    pytest.param(FakeDType(14, np.float32), id="tf.bfloat16-ish"),
    pytest.param(object(), id="object"),
]


@pytest.mark.parametrize("dtype", REJECTED_DTYPES)
def test_rejected_dtypes(dtype: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"Argument `dtype` must be either float32 or int32\. Received: "
    ):
        table(dtype=dtype)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"vocabulary_size": 0, "dim": 0}, "vocabulary_size"),
        ({"dim": 0, "initializer": 3}, "`dim`"),
        ({"initializer": 3, "combiner": "x"}, "initializer"),
        ({"initializer": 3, "dtype": "foo"}, "initializer"),
        ({"combiner": "x", "dtype": "foo"}, "combiner"),
        ({"combiner": None, "dtype": "foo"}, "combiner"),
    ],
)
def test_table_config_check_order(kwargs: dict[str, Any], words: str) -> None:
    args = {"vocabulary_size": 5, "dim": 4, **kwargs}
    with pytest.raises(ConfigError, match=words):
        TableConfig(**args)


def test_unchecked_table_fields_are_stored() -> None:
    t = table(optimizer="sgd", name=123, quantization_config="q", layout=[1, 2])
    assert t.optimizer == "sgd"
    assert t.name == 123
    assert t.quantization_config == "q"
    assert t.layout == [1, 2]


def test_table_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="vocabulary_size"):
        TableConfig(0, 1)


def test_table_config_is_mutable() -> None:
    t = table()
    t.name = "renamed"
    t.optimizer = Adam()
    assert t.name == "renamed"
    assert isinstance(t.optimizer, Adam)


def test_table_config_repr_default() -> None:
    assert repr(TableConfig(5, 4)) == (
        "TableConfig(vocabulary_size=5, dim=4, initializer=None, optimizer=None, "
        "combiner='mean', name=None, quantization_config=None)"
    )


def test_table_config_repr_shows_fields_but_not_layout_or_dtype() -> None:
    init = RowIdInitializer()
    opt = SGD()
    t = TableConfig(
        5, 4, init, opt, "sum", "t", QuantizationConfig(2, 0.0, 1.0), layout="L", dtype="int32"
    )
    assert repr(t) == (
        f"TableConfig(vocabulary_size=5, dim=4, initializer={init!r}, optimizer={opt!r}, "
        "combiner='sum', name='t', "
        "quantization_config=QuantizationConfig(num_buckets=2, lower=0.0, upper=1.0))"
    )


def test_table_config_repr_hides_any_matching_truncated_normal() -> None:
    # TensorFlow prints None for any truncated normal with mean 0 and stddev 1/sqrt(dim),
    # judged against the current dim.
    t = TableConfig(5, 4, initializer=TruncatedNormal(0.0, 0.5))
    assert "initializer=None" in repr(t)
    t.dim = 16
    assert "initializer=TruncatedNormal(mean=0.0, stddev=0.5, seed=None)" in repr(t)
    other = TableConfig(5, 4, initializer=TruncatedNormal(0.0, 0.3))
    assert "initializer=TruncatedNormal(mean=0.0, stddev=0.3, seed=None)" in repr(other)


def test_table_configs_compare_by_identity() -> None:
    a, b = TableConfig(5, 4, name="t"), TableConfig(5, 4, name="t")
    assert a != b
    assert a == a
    assert len({a: 1, b: 2}) == 2
    assert hash(a) != hash(b)


# --- FeatureConfig --------------------------------------------------------------------------


def test_feature_config_defaults() -> None:
    t = table()
    f = FeatureConfig(t)
    assert f.table is t
    assert f.max_sequence_length == 0
    assert f.validate_weights_and_indices is True
    assert f.output_shape is None
    assert f.name is None


def test_feature_config_positional() -> None:
    t = table()
    f = FeatureConfig(t, 3, False, [2, 3], "nm")
    assert (f.table, f.max_sequence_length, f.validate_weights_and_indices) == (t, 3, False)
    assert f.output_shape == (2, 3)
    assert f.name == "nm"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "<class 'NoneType'>"),
        ("t", "<class 'str'>"),
        (FeatureConfig, "<class 'type'>"),
    ],
)
def test_feature_table_must_be_a_table_config(value: Any, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        FeatureConfig(value)
    assert str(info.value) == (
        f"Argument `table` has invalid type {shown}. "
        "Expected `tf.tpu.experimental.embedding.TableConfig`."
    )


@pytest.mark.parametrize("value", [-1, 2.0, np.int32(2), np.int64(2), "2", None])
def test_max_sequence_length_must_be_a_non_negative_python_int(value: Any) -> None:
    with pytest.raises(
        ConfigError,
        match=r"Argument `max_sequence_length` must be an int and must be >= 0\. Received: ",
    ):
        FeatureConfig(table(), max_sequence_length=value)


def test_max_sequence_length_true_is_accepted() -> None:
    assert FeatureConfig(table(), max_sequence_length=True).max_sequence_length is True


@pytest.mark.parametrize("value", [1, 0, None, "True", np.bool_(True)])
def test_validate_weights_and_indices_must_be_bool(value: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"Argument `validate_weights_and_indices` must be a boolean\. Received: "
    ):
        FeatureConfig(table(), validate_weights_and_indices=value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ([], ()),
        ((), ()),
        (5, (5,)),
        (0, (0,)),
        ([2, 3], (2, 3)),
        ((2, 3), (2, 3)),
        ([None, 2], (None, 2)),
        (np.array([2, 3]), (2, 3)),
        (np.int64(4), (4,)),
        ([np.int32(2), np.int64(3)], (2, 3)),
        (True, (1,)),
        ([True], (1,)),
        (range(3), (0, 1, 2)),
        ("", ()),
        (FakeTensorShape([2, 3]), (2, 3)),
        (FakeTensorShape([None, 3]), (None, 3)),
        (FakeTensorShape([]), ()),
        (FakeTensorShape(None), None),
    ],
)
def test_output_shape_conversion(value: Any, expected: tuple[int | None, ...] | None) -> None:
    shape = FeatureConfig(table(), output_shape=value).output_shape
    assert shape == expected
    if shape is not None:
        assert all(d is None or type(d) is int for d in shape)


@pytest.mark.parametrize(("value", "dim"), [([-1], -1), (-3, -3), ((2, -5), -5)])
def test_negative_output_shape_dimension(value: Any, dim: int) -> None:
    with pytest.raises(ConfigError) as info:
        FeatureConfig(table(), output_shape=value)
    assert str(info.value) == f"Dimension {dim} must be >= 0"


@pytest.mark.parametrize("value", ["ab", "5", iter(["x"])])
def test_unconvertible_iterable_output_shape(value: Any) -> None:
    with pytest.raises(TypeError, match=r"Failed to convert .* to a shape"):
        FeatureConfig(table(), output_shape=value)


@pytest.mark.parametrize("value", [2.0, [2.0], [[2]], (2, "a"), object()])
def test_non_integer_output_shape_dimension(value: Any) -> None:
    with pytest.raises(TypeError, match=r"Dimension value must be integer or None"):
        FeatureConfig(table(), output_shape=value)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"table": None, "max_sequence_length": -1}, ConfigError, "`table`"),
        ({"max_sequence_length": -1, "output_shape": [-1]}, ConfigError, "max_sequence_length"),
        ({"max_sequence_length": -1, "output_shape": "ab"}, ConfigError, "max_sequence_length"),
        # TensorFlow converts output_shape before checking validate_weights_and_indices.
        ({"output_shape": [-1], "validate_weights_and_indices": 1}, ConfigError, "Dimension -1"),
        ({"output_shape": "ab", "validate_weights_and_indices": 1}, TypeError, "Failed"),
    ],
)
def test_feature_config_check_order(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    args: dict[str, Any] = {"table": table(), **kwargs}
    with pytest.raises(error, match=words):
        FeatureConfig(**args)


def test_feature_config_name_is_stored_unchecked() -> None:
    assert FeatureConfig(table(), name=7).name == 7


def test_feature_configs_compare_by_identity() -> None:
    t = table()
    a, b = FeatureConfig(t), FeatureConfig(t)
    assert a != b
    assert len({a, b}) == 2


def test_feature_config_repr() -> None:
    t = TableConfig(5, 4)
    assert repr(FeatureConfig(t)) == (
        f"FeatureConfig(table={t!r}, max_sequence_length=0, validate_weights_and_indices=True, "
        "output_shape=None, name=None)"
    )
    assert repr(FeatureConfig(t, 3, False, [2, 3], "nm")) == (
        f"FeatureConfig(table={t!r}, max_sequence_length=3, validate_weights_and_indices=False, "
        "output_shape=(2, 3), name='nm')"
    )


# --- QuantizationConfig ---------------------------------------------------------------------


def test_quantization_config_stores_arguments() -> None:
    q = QuantizationConfig(4, -1.0, 1.0)
    assert (q.num_buckets, q.lower, q.upper) == (4, -1.0, 1.0)


@pytest.mark.parametrize("num_buckets", [1, 0, -5, 1.5])
def test_quantization_needs_two_buckets(num_buckets: Any) -> None:
    with pytest.raises(ConfigError) as info:
        QuantizationConfig(num_buckets, 0.0, 1.0)
    assert str(info.value) == (
        f"num_buckets is {num_buckets}, must be at least 2 for simulated quantization."
    )


def test_quantization_unchecked_values_are_accepted() -> None:
    q = QuantizationConfig(2.5, 1.0, -1.0)
    assert (q.num_buckets, q.lower, q.upper) == (2.5, 1.0, -1.0)


def test_quantization_non_number_buckets_is_type_error() -> None:
    with pytest.raises(TypeError):
        QuantizationConfig(None, 0.0, 1.0)


def test_quantization_config_repr_and_identity() -> None:
    assert repr(QuantizationConfig(2, 1.0, -1.0)) == (
        "QuantizationConfig(num_buckets=2, lower=1.0, upper=-1.0)"
    )
    assert QuantizationConfig(2, 0.0, 1.0) != QuantizationConfig(2, 0.0, 1.0)


# --- RowIdInitializer -----------------------------------------------------------------------


def test_row_id_initializer_default_offset() -> None:
    init = RowIdInitializer()
    assert init.offset == 0
    out = init((4, 3), np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.repeat(np.arange(4, dtype=np.float32)[:, None], 3, 1))


@pytest.mark.parametrize(
    ("offset", "dtype", "rows"),
    [
        (0, np.float32, [0, 1, 2]),
        (5, np.float32, [5, 6, 7]),
        (-2, np.int32, [-2, -1, 0]),
        (-2, np.float32, [-2, -1, 0]),
        (0.5, np.float32, [0.5, 1.5, 2.5]),
        (0.5, np.float64, [0.5, 1.5, 2.5]),
        (np.int64(2), np.float32, [2, 3, 4]),
        (2**40, np.int64, [2**40, 2**40 + 1, 2**40 + 2]),
        (1, np.float16, [1, 2, 3]),
    ],
)
def test_row_id_initializer_values(offset: Any, dtype: Any, rows: list[float]) -> None:
    out = RowIdInitializer(offset)((3, 2), dtype)
    assert out.shape == (3, 2)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.array([[r, r] for r in rows], dtype=dtype))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("float32", np.float32),
        (np.dtype("int32"), np.int32),
        (FakeDType(1, np.float32), np.float32),
        (NumpyOnlyDType(np.int64), np.int64),
    ],
)
def test_row_id_initializer_dtype_forms(dtype: Any, expected: type) -> None:
    out = RowIdInitializer(1)((2, 2), dtype)
    assert out.dtype == np.dtype(expected)
    np.testing.assert_array_equal(out, [[1, 1], [2, 2]])


def test_row_id_initializer_accepts_dtype_keyword_and_shape_sequences() -> None:
    out = RowIdInitializer(1)(shape=[2, 3], dtype=np.float32)
    np.testing.assert_array_equal(out, [[1, 1, 1], [2, 2, 2]])
    out = RowIdInitializer(1)((np.int64(2), np.int64(1)), dtype=np.float32)
    np.testing.assert_array_equal(out, [[1], [2]])


def test_row_id_initializer_requires_dtype() -> None:
    with pytest.raises(TypeError, match="dtype"):
        RowIdInitializer()((3, 2))  # type: ignore[call-arg]


def test_row_id_initializer_zero_rows() -> None:
    out = RowIdInitializer(1)((0, 2), np.float32)
    assert out.shape == (0, 2)


@pytest.mark.parametrize("offset", [0.5, 2.0])
def test_row_id_initializer_python_float_offset_with_integer_dtype(offset: float) -> None:
    with pytest.raises(TypeError, match="Cannot convert"):
        RowIdInitializer(offset)((2, 2), np.int32)


@pytest.mark.parametrize(
    ("offset", "rows"),
    [(np.float64(1.0), [1, 2]), (np.float64(1.5), [1, 2]), (np.float32(2.5), [2, 3])],
)
def test_row_id_initializer_numpy_float_offset_is_truncated_for_integer_dtype(
    offset: Any, rows: list[int]
) -> None:
    out = RowIdInitializer(offset)((2, 2), np.int32)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[r, r] for r in rows])


def test_row_id_initializer_identity_equality() -> None:
    assert RowIdInitializer(1) != RowIdInitializer(1)


# --- the default initializer ----------------------------------------------------------------


def test_default_initializer_distribution_on_a_large_table() -> None:
    # SEMANTICS §2.4: 20000 x 16, all |x| < 2/sqrt(16) = 0.5, std ~ 0.8796 * 0.25, mean ~ 0.
    t = TableConfig(20000, 16)
    values = t.initializer((20000, 16), dtype=np.float32)
    assert values.shape == (20000, 16)
    assert values.dtype == np.float32
    assert np.abs(values).max() < 0.5
    # Relative standard error of the sample std here is ~0.1%; 1% is a loose, stable bound.
    assert values.std() == pytest.approx(0.8796 * 0.25, rel=0.01)
    assert abs(float(values.mean())) < 0.003


@pytest.mark.parametrize("dim", [1, 3, 7, 64])
def test_default_initializer_bounds(dim: int) -> None:
    values = TableConfig(5000, dim).initializer((5000, dim), dtype=np.float32)
    assert np.abs(values).max() < 2 / math.sqrt(dim)
    assert values.std() == pytest.approx(0.8796 / math.sqrt(dim), rel=0.05)


def test_default_initializer_is_unseeded() -> None:
    init = TableConfig(100, 8).initializer
    assert not np.array_equal(init((100, 8), dtype=np.float32), init((100, 8), dtype=np.float32))


def test_truncated_normal_int_seed_is_repeatable() -> None:
    init = TruncatedNormal(0.0, 1.0, seed=7)
    np.testing.assert_array_equal(init((50, 4)), init((50, 4)))


def test_truncated_normal_generator_seed() -> None:
    a = TruncatedNormal(0.0, 1.0, seed=np.random.default_rng(3))
    b = TruncatedNormal(0.0, 1.0, seed=np.random.default_rng(3))
    first = a((50, 4))
    np.testing.assert_array_equal(first, b((50, 4)))
    assert not np.array_equal(first, a((50, 4)))


def test_truncated_normal_mean_and_stddev() -> None:
    init = TruncatedNormal(mean=3.0, stddev=0.1, seed=0)
    values = init((10000, 4))
    assert values.min() > 2.8
    assert values.max() < 3.2
    assert values.mean() == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.float64, np.float64), (np.float16, np.float16), ("float32", np.float32)],
)
def test_truncated_normal_float_dtypes(dtype: Any, expected: type) -> None:
    values = TruncatedNormal(0.0, 1.0, seed=0)((10, 3), dtype=dtype)
    assert values.dtype == np.dtype(expected)
    assert np.abs(values.astype(np.float64)).max() <= 2.0


def test_truncated_normal_default_dtype_is_float32() -> None:
    assert TruncatedNormal()((2, 2)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int32, np.int64, "int32"])
def test_truncated_normal_rejects_integer_dtypes(dtype: Any) -> None:
    with pytest.raises(ConfigError, match="floating point"):
        TruncatedNormal()((2, 2), dtype=dtype)
