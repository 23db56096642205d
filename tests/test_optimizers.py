"""SGD, Adagrad, AdagradMomentum, Adam, FTRL: arguments, checks, equality, slots.

Every case pins TensorFlow 2.21's behaviour (SEMANTICS.md §1.3, §1.4, §2.3): positional order,
defaults, the attributes stored (in TensorFlow's order, which equality walks), the checks in order
with their error class and key words, and each optimizer's slot names and initial values.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from embserve.errors import ConfigError
from embserve.optimizers import FTRL, SGD, Adagrad, AdagradMomentum, Adam, _Optimizer

ALL = [SGD, Adagrad, AdagradMomentum, Adam, FTRL]
WITH_SLOT_FN = [Adagrad, AdagradMomentum, Adam, FTRL]

COMMON_ATTRIBUTES = {
    "slot_variable_creation_fn": None,
    "learning_rate": 0.001,
    "use_gradient_accumulation": True,
    "clip_weight_min": None,
    "clip_weight_max": None,
    "clip_gradient_min": None,
    "clip_gradient_max": None,
    "weight_decay_factor": None,
    "multiply_weight_decay_factor_by_learning_rate": None,
    "low_dimensional_packing_status": False,
}

# vars() of a default-constructed optimizer, in TensorFlow's order.
DEFAULT_ATTRIBUTES: dict[type[_Optimizer], dict[str, Any]] = {
    SGD: {**COMMON_ATTRIBUTES, "learning_rate": 0.01},
    Adagrad: {**COMMON_ATTRIBUTES, "initial_accumulator_value": 0.1},
    AdagradMomentum: {
        **COMMON_ATTRIBUTES,
        "momentum": 0.0,
        "use_nesterov": False,
        "exponent": 2,
        "beta2": 1,
        "epsilon": 1e-10,
    },
    Adam: {
        **COMMON_ATTRIBUTES,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-07,
        "lazy_adam": True,
        "sum_inside_sqrt": True,
    },
    FTRL: {
        **COMMON_ATTRIBUTES,
        "initial_accumulator_value": 0.1,
        "learning_rate_power": -0.5,
        "l1_regularization_strength": 0.0,
        "l2_regularization_strength": 0.0,
        "beta": 0.0,
        "multiply_linear_by_learning_rate": False,
        "allow_zero_accumulator": False,
    },
}

_COMMON_TAIL = [
    "use_gradient_accumulation",
    "clip_weight_min",
    "clip_weight_max",
    "weight_decay_factor",
    "multiply_weight_decay_factor_by_learning_rate",
]
PARAMETERS: dict[type[_Optimizer], list[str]] = {
    SGD: ["learning_rate", *_COMMON_TAIL, "clipvalue", "low_dimensional_packing_status"],
    Adagrad: [
        "learning_rate",
        "initial_accumulator_value",
        *_COMMON_TAIL,
        "slot_variable_creation_fn",
        "clipvalue",
        "low_dimensional_packing_status",
    ],
    AdagradMomentum: [
        "learning_rate",
        "momentum",
        "use_nesterov",
        "exponent",
        "beta2",
        "epsilon",
        *_COMMON_TAIL,
        "slot_variable_creation_fn",
        "clipvalue",
        "low_dimensional_packing_status",
    ],
    Adam: [
        "learning_rate",
        "beta_1",
        "beta_2",
        "epsilon",
        "lazy_adam",
        "sum_inside_sqrt",
        *_COMMON_TAIL,
        "slot_variable_creation_fn",
        "clipvalue",
        "low_dimensional_packing_status",
    ],
    FTRL: [
        "learning_rate",
        "learning_rate_power",
        "l1_regularization_strength",
        "l2_regularization_strength",
        "beta",
        "initial_accumulator_value",
        *_COMMON_TAIL,
        "slot_variable_creation_fn",
        "clipvalue",
        "multiply_linear_by_learning_rate",
        "allow_zero_accumulator",
        "low_dimensional_packing_status",
    ],
}

SLOTS: dict[type[_Optimizer], list[tuple[str, float]]] = {
    SGD: [],
    Adagrad: [("accumulators", 0.1)],
    AdagradMomentum: [("accumulators", 0.0), ("momenta", 0.0)],
    Adam: [("momenta", 0.0), ("velocities", 0.0)],
    FTRL: [("accumulators", 0.1), ("linears", 0.0)],
}


def _name(cls: type) -> str:
    return cls.__name__


# --- arguments and stored attributes --------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_default_attributes_in_tensorflow_order(cls: type[_Optimizer]) -> None:
    opt = cls()
    assert list(vars(opt).items()) == list(DEFAULT_ATTRIBUTES[cls].items())


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_parameter_order(cls: type[_Optimizer]) -> None:
    params = inspect.signature(cls).parameters.values()
    assert [p.name for p in params] == PARAMETERS[cls]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_positional_arguments_land_in_their_attributes(cls: type[_Optimizer]) -> None:
    # Distinct, valid values for every argument, passed positionally.
    values: dict[str, Any] = {
        "learning_rate": 0.25,
        "initial_accumulator_value": 0.5,
        "momentum": 0.7,
        "use_nesterov": True,
        "exponent": 3,
        "beta2": 0.95,
        "epsilon": 1e-3,
        "beta_1": 0.8,
        "beta_2": 0.85,
        "lazy_adam": False,
        "sum_inside_sqrt": False,
        "learning_rate_power": -0.6,
        "l1_regularization_strength": 0.01,
        "l2_regularization_strength": 0.02,
        "beta": 0.03,
        "use_gradient_accumulation": True,
        "clip_weight_min": -4.0,
        "clip_weight_max": 4.0,
        "weight_decay_factor": 0.001,
        "multiply_weight_decay_factor_by_learning_rate": True,
        "slot_variable_creation_fn": print,
        "clipvalue": (-1.0, 2.0),
        "multiply_linear_by_learning_rate": True,
        "allow_zero_accumulator": True,
        "low_dimensional_packing_status": True,
    }
    args = [values[name] for name in PARAMETERS[cls]]
    opt = cls(*args)
    for name in PARAMETERS[cls]:
        if name == "clipvalue":
            assert (opt.clip_gradient_min, opt.clip_gradient_max) == (-1.0, 2.0)
        else:
            assert getattr(opt, name) == values[name], name


@pytest.mark.parametrize("cls", ALL, ids=_name)
@pytest.mark.parametrize("learning_rate", [-1.0, 0.0, "a", None])
def test_learning_rate_is_not_validated(cls: type[_Optimizer], learning_rate: Any) -> None:
    assert cls(learning_rate).learning_rate == learning_rate


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_callable_learning_rate_is_stored(cls: type[_Optimizer]) -> None:
    def schedule() -> float:
        return 0.5

    assert cls(schedule).learning_rate is schedule


def test_sgd_has_no_slot_variable_creation_fn_argument() -> None:
    assert SGD().slot_variable_creation_fn is None
    with pytest.raises(TypeError):
        SGD(slot_variable_creation_fn=print)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", WITH_SLOT_FN, ids=_name)
def test_slot_variable_creation_fn_stored(cls: type[_Optimizer]) -> None:
    def create(table: Any, names: list[str], initializers: list[Any]) -> dict[str, Any]:
        return {}

    assert cls(slot_variable_creation_fn=create).slot_variable_creation_fn is create


@pytest.mark.parametrize("cls", WITH_SLOT_FN, ids=_name)
@pytest.mark.parametrize("value", ["x", 3, 0.5])
def test_slot_variable_creation_fn_must_be_callable(cls: type[_Optimizer], value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        cls(slot_variable_creation_fn=value)
    assert str(info.value) == (
        f"Argument `slot_variable_creation_fn` must be either None or a callable. Received: {value}"
    )


# --- clipvalue ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=_name)
@pytest.mark.parametrize(
    ("clipvalue", "expected"),
    [
        (None, (None, None)),
        (2.0, (-2.0, 2.0)),
        (2, (-2.0, 2)),
        (-2.0, (2.0, -2.0)),
        ((1.0, 3.0), (1.0, 3.0)),
        ((None, 3.0), (None, 3.0)),
        ((-1.0, None), (-1.0, None)),
        ((None, None), (None, None)),
        ((5, -5), (5, -5)),
    ],
)
def test_clipvalue_forms(cls: type[_Optimizer], clipvalue: Any, expected: tuple[Any, Any]) -> None:
    opt = cls(clipvalue=clipvalue)
    assert (opt.clip_gradient_min, opt.clip_gradient_max) == expected
    assert not hasattr(opt, "clipvalue")


def test_clipvalue_int_is_negated_as_float() -> None:
    opt = SGD(clipvalue=2)
    assert type(opt.clip_gradient_min) is float
    assert type(opt.clip_gradient_max) is int


@pytest.mark.parametrize("cls", ALL, ids=_name)
@pytest.mark.parametrize(
    ("clipvalue", "words"),
    [
        ((1, 2, 3), "too many values to unpack"),
        ((1,), "not enough values to unpack"),
        ((), "not enough"),
    ],
)
def test_clipvalue_tuple_of_wrong_length(cls: type[_Optimizer], clipvalue: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        cls(clipvalue=clipvalue)


@pytest.mark.parametrize("cls", ALL, ids=_name)
@pytest.mark.parametrize("clipvalue", [[1.0, 2.0], "a"])
def test_clipvalue_of_other_types_is_a_type_error(cls: type[_Optimizer], clipvalue: Any) -> None:
    with pytest.raises(TypeError, match="can't multiply sequence"):
        cls(clipvalue=clipvalue)


@pytest.mark.parametrize("cls", ALL, ids=_name)
@pytest.mark.parametrize("use_gradient_accumulation", [False, 0, None])
@pytest.mark.parametrize("clipvalue", [1.0, (None, None), 0])
def test_clipvalue_needs_gradient_accumulation(
    cls: type[_Optimizer], use_gradient_accumulation: Any, clipvalue: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        cls(use_gradient_accumulation=use_gradient_accumulation, clipvalue=clipvalue)
    message = str(info.value)
    assert message.startswith(
        "When `use_gradient_accumulation` is False, gradient clipping cannot be used and "
        "`clipvalue` should be left as None."
    )
    assert f"Received value {clipvalue} for argument `clipvalue`." in message


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_no_gradient_accumulation_without_clipping_is_fine(cls: type[_Optimizer]) -> None:
    opt = cls(use_gradient_accumulation=False)
    assert opt.use_gradient_accumulation is False
    assert (opt.clip_gradient_min, opt.clip_gradient_max) == (None, None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Adagrad(initial_accumulator_value=0, use_gradient_accumulation=False, clipvalue=1),
        lambda: AdagradMomentum(epsilon=0, use_gradient_accumulation=False, clipvalue=1),
        lambda: Adam(beta_1=2.0, use_gradient_accumulation=False, clipvalue=1),
        lambda: Adam(lazy_adam=False, use_gradient_accumulation=False, clipvalue=1),
        lambda: FTRL(initial_accumulator_value=0, use_gradient_accumulation=False, clipvalue=1),
    ],
    ids=["Adagrad", "AdagradMomentum", "Adam-beta", "Adam-lazy", "FTRL"],
)
def test_clipvalue_check_runs_before_optimizer_checks(make: Any) -> None:
    with pytest.raises(ConfigError, match="gradient clipping cannot be used"):
        make()


@pytest.mark.parametrize("cls", WITH_SLOT_FN, ids=_name)
def test_slot_variable_creation_fn_check_runs_first(cls: type[_Optimizer]) -> None:
    with pytest.raises(ConfigError, match="slot_variable_creation_fn"):
        cls(slot_variable_creation_fn=3, use_gradient_accumulation=False, clipvalue=1.0)


# --- per-optimizer checks -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Adagrad, FTRL], ids=_name)
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5])
def test_initial_accumulator_value_must_be_positive(cls: type[_Optimizer], value: float) -> None:
    with pytest.raises(ConfigError) as info:
        cls(initial_accumulator_value=value)
    assert str(info.value) == (
        f"Argument `initial_accumulator_value` must be a positive float. Received: {value}"
    )


def test_ftrl_zero_accumulator_rejected_even_when_allowed() -> None:
    with pytest.raises(ConfigError, match="initial_accumulator_value"):
        FTRL(initial_accumulator_value=0.0, allow_zero_accumulator=True)


@pytest.mark.parametrize("cls", [Adagrad, FTRL], ids=_name)
@pytest.mark.parametrize("value", [None, "a"])
def test_initial_accumulator_value_of_wrong_type(cls: type[_Optimizer], value: Any) -> None:
    with pytest.raises(TypeError, match="not supported between"):
        cls(initial_accumulator_value=value)


def test_ftrl_unchecked_arguments() -> None:
    opt = FTRL(
        learning_rate_power=0.5, l1_regularization_strength=-1.0, l2_regularization_strength=-2.0
    )
    assert opt.learning_rate_power == 0.5
    assert opt.l1_regularization_strength == -1.0
    assert opt.l2_regularization_strength == -2.0


@pytest.mark.parametrize("epsilon", [0, 0.0, -1e-10])
def test_adagrad_momentum_epsilon_must_be_positive(epsilon: float) -> None:
    with pytest.raises(ConfigError) as info:
        AdagradMomentum(epsilon=epsilon)
    assert str(info.value) == "Adagrad momentum: epsilon must be positive"


@pytest.mark.parametrize("exponent", [0, -2])
def test_adagrad_momentum_exponent_must_be_positive(exponent: float) -> None:
    with pytest.raises(ConfigError) as info:
        AdagradMomentum(exponent=exponent)
    assert str(info.value) == "Adagrad momentum: Precondition exponent must >0"


def test_adagrad_momentum_epsilon_checked_before_exponent() -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        AdagradMomentum(epsilon=0, exponent=0)


def test_adagrad_momentum_unchecked_arguments() -> None:
    opt = AdagradMomentum(momentum=-3.0, beta2=5.0)
    assert (opt.momentum, opt.beta2) == (-3.0, 5.0)


@pytest.mark.parametrize("beta_1", [-0.1, 1.0, 1.5])
def test_adam_beta_1_range(beta_1: float) -> None:
    with pytest.raises(ConfigError) as info:
        Adam(beta_1=beta_1)
    assert str(info.value) == f"Argument `beta_1` must be >= 0 and < 1. Received: {beta_1}."


@pytest.mark.parametrize("beta_2", [-0.1, 1.0, 1.5])
def test_adam_beta_2_range_prints_beta_2(beta_2: float) -> None:
    # TensorFlow prints beta_1's value in this message (a bug); embserve prints beta_2's.
    with pytest.raises(ConfigError) as info:
        Adam(beta_1=0.5, beta_2=beta_2)
    assert str(info.value) == f"Argument `beta_2` must be >= 0 and < 1. Received: {beta_2}."


@pytest.mark.parametrize("epsilon", [0, 0.0, -1.0])
def test_adam_epsilon_must_be_positive(epsilon: float) -> None:
    with pytest.raises(ConfigError) as info:
        Adam(epsilon=epsilon)
    assert str(info.value) == f"epsilon must be positive; got {epsilon}."


def test_adam_non_lazy_needs_gradient_accumulation() -> None:
    with pytest.raises(
        ConfigError,
        match=r"When disabling lazy Adam \(`lazy_adam=False`\), gradient accumulation must be used",
    ):
        Adam(lazy_adam=False, use_gradient_accumulation=False)
    assert Adam(lazy_adam=False).lazy_adam is False
    assert Adam(use_gradient_accumulation=False).use_gradient_accumulation is False


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"beta_1": 1.0, "beta_2": 1.0}, "beta_1"),
        ({"beta_2": 1.0, "epsilon": 0.0}, "beta_2"),
        ({"epsilon": 0.0, "lazy_adam": False, "use_gradient_accumulation": False}, "epsilon"),
    ],
)
def test_adam_check_order(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Adam(**kwargs)


def test_adam_edges_accepted() -> None:
    assert Adam(beta_1=0.0, beta_2=0.0).beta_1 == 0.0


@pytest.mark.parametrize("beta_1", ["a", None])
def test_adam_beta_of_wrong_type(beta_1: Any) -> None:
    with pytest.raises(TypeError, match="not supported between"):
        Adam(beta_1=beta_1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Adagrad(initial_accumulator_value=0),
        lambda: AdagradMomentum(epsilon=0),
        lambda: Adam(beta_1=1.0),
        lambda: FTRL(initial_accumulator_value=-1),
        lambda: SGD(clipvalue=1.0, use_gradient_accumulation=False),
    ],
)
def test_config_errors_are_value_errors(make: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the class hierarchy is what is tested
        make()


# --- equality and hashing -------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_equal_by_value(cls: type[_Optimizer]) -> None:
    a, b = cls(0.1), cls(0.1)
    assert a == b
    assert not a != b  # noqa: SIM202 - __ne__ is what is tested
    assert hash(a) == hash(b)
    assert len({a: 1, b: 2}) == 1
    assert cls(0.1) != cls(0.2)


@pytest.mark.parametrize(
    ("cls", "other"), [(SGD, Adagrad), (Adagrad, FTRL), (Adam, AdagradMomentum)]
)
def test_different_classes_are_unequal(cls: type[_Optimizer], other: type[_Optimizer]) -> None:
    assert cls() != other()
    assert other() != cls()


@pytest.mark.parametrize("other", [1, None, "SGD", object()])
def test_not_equal_to_non_optimizers(other: Any) -> None:
    assert SGD() != other
    assert (SGD() == other) is False


def test_equality_with_same_callables() -> None:
    def schedule() -> float:
        return 0.1

    assert Adam(schedule) == Adam(schedule)
    assert Adam(lambda: 0.1) != Adam(lambda: 0.1)


def test_hash_fails_on_unhashable_attribute() -> None:
    with pytest.raises(TypeError, match="unhashable"):
        hash(SGD([0.1]))  # type: ignore[arg-type]


def test_optimizer_base_is_abstract() -> None:
    with pytest.raises(TypeError):
        _Optimizer(0.1, True, None, None, None, None)  # type: ignore[abstract]
    assert all(isinstance(cls(), _Optimizer) for cls in ALL)


# --- slots ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_slot_names_in_creation_order(cls: type[_Optimizer]) -> None:
    opt = cls()
    assert opt._slot_names() == [name for name, _ in SLOTS[cls]]
    assert len(opt._slot_initializers()) == len(opt._slot_names())


@pytest.mark.parametrize("cls", ALL, ids=_name)
def test_default_slot_initial_values(cls: type[_Optimizer]) -> None:
    opt = cls()
    for (name, value), init in zip(SLOTS[cls], opt._slot_initializers(), strict=True):
        out = init((4, 3))
        assert out.shape == (4, 3), name
        assert out.dtype == np.float32, name
        np.testing.assert_array_equal(out, np.full((4, 3), value, np.float32), err_msg=name)


@pytest.mark.parametrize(
    ("opt", "values"),
    [
        (Adagrad(initial_accumulator_value=0.7), [0.7]),
        (FTRL(initial_accumulator_value=0.3), [0.3, 0.0]),
        (AdagradMomentum(momentum=0.9, epsilon=0.5), [0.0, 0.0]),
        (Adam(beta_1=0.5), [0.0, 0.0]),
    ],
    ids=["Adagrad", "FTRL", "AdagradMomentum", "Adam"],
)
def test_slot_initial_values_follow_hyperparameters(opt: _Optimizer, values: list[float]) -> None:
    outs = [init((3, 2), dtype=np.float32) for init in opt._slot_initializers()]
    assert len(outs) == len(values)
    for out, value in zip(outs, values, strict=True):
        np.testing.assert_allclose(out, np.full((3, 2), value, np.float32))


class FakeDType:
    """Stands in for a ``tf.DType``."""

    as_datatype_enum = 2
    as_numpy_dtype = np.float64


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.float64, np.float64), ("float32", np.float32), (FakeDType(), np.float64)],
)
def test_slot_initializer_dtype(dtype: Any, expected: type) -> None:
    (init,) = Adagrad(initial_accumulator_value=0.25)._slot_initializers()
    out = init([2, 2], dtype=dtype)
    assert out.dtype == np.dtype(expected)
    np.testing.assert_array_equal(out, np.full((2, 2), 0.25))


def test_slot_lists_are_fresh() -> None:
    opt = FTRL()
    opt._slot_names().append("extra")
    opt._slot_initializers().clear()
    assert opt._slot_names() == ["accumulators", "linears"]
    assert len(opt._slot_initializers()) == 2


def test_sgd_has_no_slots() -> None:
    assert SGD()._slot_names() == []
    assert SGD()._slot_initializers() == []
