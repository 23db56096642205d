"""The TPU embedding optimizers: hyperparameters, slot names and slot initial values.

``SGD``, ``Adagrad``, ``AdagradMomentum``, ``Adam`` and ``FTRL`` mirror the classes of the same
names in ``tf.tpu.experimental.embedding``: the same positional order, defaults, stored attributes,
constructor checks and value equality. On the CPU serving path no update rule runs; an optimizer
decides only which slot variables each table carries (their names, in TensorFlow's creation order,
and their initial values), so that checkpoints written by TensorFlow restore one to one.

Each docstring gives the update rule TensorFlow documents for the TPU (its
``optimization_parameters.proto``), in the notation ``w`` = table row, ``g`` = its gradient,
``lr`` = ``learning_rate``. Before any rule, ``g`` is clipped to ``[clip_gradient_min,
clip_gradient_max]``; after it, ``w`` is clipped to ``[clip_weight_min, clip_weight_max]``, and with
``weight_decay_factor`` set, ``w -= weight_decay_factor * w`` (times ``lr`` when
``multiply_weight_decay_factor_by_learning_rate``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np

from embserve.errors import ConfigError

__all__ = ["FTRL", "SGD", "Adagrad", "AdagradMomentum", "Adam"]

#: A learning rate: a number, or a zero-argument callable returning one (a dynamic rate).
LearningRate = float | Callable[[], float]
#: ``clipvalue``: ``c`` (clip to ``[-c, c]``) or a ``(min, max)`` tuple whose entries may be None.
ClipValue = float | tuple[float | None, float | None]
#: ``slot_variable_creation_fn(table, slot_names, slot_initializers) -> {slot name: variable}``.
SlotVariableCreationFn = Callable[[Any, list[str], list[Callable[..., np.ndarray]]], Any]


def _as_numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """Converts a numpy dtype spec or a duck-typed ``tf.DType`` (``as_numpy_dtype``) to np.dtype."""
    numpy_type = getattr(dtype, "as_numpy_dtype", None)
    if numpy_type is not None and not isinstance(dtype, np.dtype):
        return np.dtype(numpy_type)
    return np.dtype(dtype)


class _Constant:
    """A slot initializer: ``init(shape, dtype=np.float32)`` is an array filled with ``value``.

    Args:
        value: the fill value (``0.0`` for every slot except Adagrad's and FTRL's accumulators).
    """

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        return np.full(tuple(shape), self.value, dtype=_as_numpy_dtype(dtype))

    def __repr__(self) -> str:
        return f"_Constant(value={self.value!r})"


class _Optimizer(abc.ABC):
    """Base of the embedding optimizers: the hyperparameters every one of them takes.

    Embedding code recognises an optimizer with ``isinstance(x, _Optimizer)``; anything else given
    as an optimizer is rejected there, as TensorFlow does.

    Optimizers compare **by value**: ``a == b`` when ``b`` is an instance of ``a``'s class and
    their attributes are pairwise equal, and ``hash`` hashes the attribute items, so equal
    optimizers are one dict key. An unhashable attribute (say ``learning_rate=[0.1]``) makes
    ``hash`` raise ``TypeError``.

    Args:
        learning_rate: a float, or a zero-argument callable for a dynamic rate. Not validated.
        use_gradient_accumulation: accumulate a minibatch's gradients before applying them.
            ``False`` is faster but less accurate, and forbids ``clipvalue``.
        clip_weight_min: lower bound the weights are clipped to after an update; None: none.
        clip_weight_max: upper bound the weights are clipped to after an update; None: none.
        weight_decay_factor: weights are decayed by this factor each step; None: no decay.
        multiply_weight_decay_factor_by_learning_rate: scale the decay factor by the current
            learning rate.
        clipvalue: gradient clipping: None (off), a number ``c`` (clip to ``[-c, c]``), or a
            ``(min, max)`` tuple, either entry None for no bound on that side. Stored as
            ``clip_gradient_min`` / ``clip_gradient_max``.
        slot_variable_creation_fn: None, or a callable ``fn(table, slot_names,
            slot_initializers)`` returning ``{slot name: variable}`` that replaces the built-in
            slot creation.
        low_dimensional_packing_status: TPU memory packing of 1-, 2- and 4-wide tables; stored
            only.

    Raises:
        ConfigError: ``slot_variable_creation_fn`` is neither None nor callable; or ``clipvalue``
            is set while ``use_gradient_accumulation`` is false; or a ``clipvalue`` tuple does not
            have two entries.
        TypeError: ``clipvalue`` is neither None, a tuple, nor a number (a list, a string).
    """

    def __init__(
        self,
        learning_rate: LearningRate,
        use_gradient_accumulation: bool,
        clip_weight_min: float | None,
        clip_weight_max: float | None,
        weight_decay_factor: float | None,
        multiply_weight_decay_factor_by_learning_rate: bool | None,
        clipvalue: ClipValue | None = None,
        slot_variable_creation_fn: SlotVariableCreationFn | None = None,
        low_dimensional_packing_status: bool = False,
    ) -> None:
        # Attribute assignment order is TensorFlow's: equality and hashing walk vars() in order.
        if slot_variable_creation_fn is not None and not callable(slot_variable_creation_fn):
            raise ConfigError(
                "Argument `slot_variable_creation_fn` must be either None or a callable. "
                f"Received: {slot_variable_creation_fn}"
            )
        self.slot_variable_creation_fn = slot_variable_creation_fn
        self.learning_rate = learning_rate
        self.use_gradient_accumulation = use_gradient_accumulation
        self.clip_weight_min = clip_weight_min
        self.clip_weight_max = clip_weight_max
        if not use_gradient_accumulation and clipvalue is not None:
            raise ConfigError(
                "When `use_gradient_accumulation` is False, gradient clipping cannot be used and "
                f"`clipvalue` should be left as None. Received value {clipvalue} for argument "
                "`clipvalue`."
            )
        self.clip_gradient_min: Any
        self.clip_gradient_max: Any
        if clipvalue is None:
            self.clip_gradient_min, self.clip_gradient_max = None, None
        elif isinstance(clipvalue, tuple):
            # TensorFlow unpacks the tuple as is; a wrong length is Python's unpacking ValueError.
            if len(clipvalue) > 2:
                raise ConfigError("too many values to unpack (expected 2)")
            if len(clipvalue) < 2:
                raise ConfigError(f"not enough values to unpack (expected 2, got {len(clipvalue)})")
            self.clip_gradient_min, self.clip_gradient_max = clipvalue
        else:
            # Not validated, as in TensorFlow: -2.0 gives (2.0, -2.0); a list raises TypeError.
            self.clip_gradient_min, self.clip_gradient_max = -1.0 * clipvalue, clipvalue
        self.weight_decay_factor = weight_decay_factor
        self.multiply_weight_decay_factor_by_learning_rate = (
            multiply_weight_decay_factor_by_learning_rate
        )
        self.low_dimensional_packing_status = low_dimensional_packing_status

    @abc.abstractmethod
    def _slot_names(self) -> list[str]:
        """Names of the slot variables, in creation order (``parameters`` not included)."""

    @abc.abstractmethod
    def _slot_initializers(self) -> list[Callable[..., np.ndarray]]:
        """Initializers parallel to :meth:`_slot_names`: ``init(shape, dtype=np.float32)``."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self.__class__):
            return False
        # Pairwise over the attribute items in order, exactly as TensorFlow compares.
        return all(
            mine == theirs
            for mine, theirs in zip(vars(self).items(), vars(other).items(), strict=False)
        )

    def __hash__(self) -> int:
        return hash(tuple(vars(self).items()))


class SGD(_Optimizer):
    """Stochastic gradient descent for TPU embeddings; no slot variables.

    Update: ``w -= lr * g``.

    Args:
        learning_rate: a float, or a zero-argument callable for a dynamic rate.
        use_gradient_accumulation: see :class:`_Optimizer`.
        clip_weight_min: see :class:`_Optimizer`.
        clip_weight_max: see :class:`_Optimizer`.
        weight_decay_factor: see :class:`_Optimizer`.
        multiply_weight_decay_factor_by_learning_rate: see :class:`_Optimizer`.
        clipvalue: see :class:`_Optimizer`.
        low_dimensional_packing_status: see :class:`_Optimizer`.

    ``slot_variable_creation_fn`` is not an argument here (SGD has no slots); the attribute exists
    and is None.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.01,
        use_gradient_accumulation: bool = True,
        clip_weight_min: float | None = None,
        clip_weight_max: float | None = None,
        weight_decay_factor: float | None = None,
        multiply_weight_decay_factor_by_learning_rate: bool | None = None,
        clipvalue: ClipValue | None = None,
        low_dimensional_packing_status: bool = False,
    ) -> None:
        super().__init__(
            learning_rate,
            use_gradient_accumulation,
            clip_weight_min,
            clip_weight_max,
            weight_decay_factor,
            multiply_weight_decay_factor_by_learning_rate,
            clipvalue,
            None,
            low_dimensional_packing_status,
        )

    def _slot_names(self) -> list[str]:
        return []

    def _slot_initializers(self) -> list[Callable[..., np.ndarray]]:
        return []


class Adagrad(_Optimizer):
    """Adagrad for TPU embeddings; one slot, ``accumulators``.

    Update::

        accumulators += g ** 2
        w -= lr * g / sqrt(accumulators)

    Args:
        learning_rate: a float, or a zero-argument callable for a dynamic rate.
        initial_accumulator_value: the initial value of ``accumulators``; must be > 0.
        use_gradient_accumulation: see :class:`_Optimizer`.
        clip_weight_min: see :class:`_Optimizer`.
        clip_weight_max: see :class:`_Optimizer`.
        weight_decay_factor: see :class:`_Optimizer`.
        multiply_weight_decay_factor_by_learning_rate: see :class:`_Optimizer`.
        slot_variable_creation_fn: see :class:`_Optimizer`.
        clipvalue: see :class:`_Optimizer`.
        low_dimensional_packing_status: see :class:`_Optimizer`.

    Raises:
        ConfigError: ``initial_accumulator_value <= 0``, after the checks of :class:`_Optimizer`.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        initial_accumulator_value: float = 0.1,
        use_gradient_accumulation: bool = True,
        clip_weight_min: float | None = None,
        clip_weight_max: float | None = None,
        weight_decay_factor: float | None = None,
        multiply_weight_decay_factor_by_learning_rate: bool | None = None,
        slot_variable_creation_fn: SlotVariableCreationFn | None = None,
        clipvalue: ClipValue | None = None,
        low_dimensional_packing_status: bool = False,
    ) -> None:
        super().__init__(
            learning_rate,
            use_gradient_accumulation,
            clip_weight_min,
            clip_weight_max,
            weight_decay_factor,
            multiply_weight_decay_factor_by_learning_rate,
            clipvalue,
            slot_variable_creation_fn,
            low_dimensional_packing_status,
        )
        if initial_accumulator_value <= 0:
            raise ConfigError(
                "Argument `initial_accumulator_value` must be a positive float. "
                f"Received: {initial_accumulator_value}"
            )
        self.initial_accumulator_value = initial_accumulator_value

    def _slot_names(self) -> list[str]:
        return ["accumulators"]

    def _slot_initializers(self) -> list[Callable[..., np.ndarray]]:
        return [_Constant(self.initial_accumulator_value)]


class AdagradMomentum(_Optimizer):
    """Adagrad with momentum for TPU embeddings; slots ``accumulators`` and ``momenta``.

    Update (https://arxiv.org/abs/2002.11803)::

        accumulators = accumulators + g ** 2                       if beta2 == 1
                       beta2 * accumulators + (1 - beta2) * g ** 2  otherwise
        scale = (accumulators + epsilon) ** (-1 / exponent)
        momenta = momentum * momenta + g * scale
        step = momentum * momenta + g * scale   if use_nesterov
               momenta                          otherwise
        w -= lr * step

    Args:
        learning_rate: a float, or a zero-argument callable for a dynamic rate.
        momentum: decay of the momentum accumulator. Not validated.
        use_nesterov: use Nesterov momentum.
        exponent: the root taken of the Adagrad accumulator; must be > 0.
        beta2: moving-average decay of the Adagrad accumulator (1: a plain sum). Not validated.
        epsilon: added to the accumulator before taking the root; must be > 0.
        use_gradient_accumulation: see :class:`_Optimizer`.
        clip_weight_min: see :class:`_Optimizer`.
        clip_weight_max: see :class:`_Optimizer`.
        weight_decay_factor: see :class:`_Optimizer`.
        multiply_weight_decay_factor_by_learning_rate: see :class:`_Optimizer`.
        slot_variable_creation_fn: see :class:`_Optimizer`.
        clipvalue: see :class:`_Optimizer`.
        low_dimensional_packing_status: see :class:`_Optimizer`.

    Raises:
        ConfigError: ``epsilon <= 0``, then ``exponent <= 0``, after the checks of
            :class:`_Optimizer`.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        momentum: float = 0.0,
        use_nesterov: bool = False,
        exponent: float = 2,
        beta2: float = 1,
        epsilon: float = 1e-10,
        use_gradient_accumulation: bool = True,
        clip_weight_min: float | None = None,
        clip_weight_max: float | None = None,
        weight_decay_factor: float | None = None,
        multiply_weight_decay_factor_by_learning_rate: bool | None = None,
        slot_variable_creation_fn: SlotVariableCreationFn | None = None,
        clipvalue: ClipValue | None = None,
        low_dimensional_packing_status: bool = False,
    ) -> None:
        super().__init__(
            learning_rate,
            use_gradient_accumulation,
            clip_weight_min,
            clip_weight_max,
            weight_decay_factor,
            multiply_weight_decay_factor_by_learning_rate,
            clipvalue,
            slot_variable_creation_fn,
            low_dimensional_packing_status,
        )
        if epsilon <= 0:
            raise ConfigError("Adagrad momentum: epsilon must be positive")
        if exponent <= 0:
            raise ConfigError("Adagrad momentum: Precondition exponent must >0")
        self.momentum = momentum
        self.use_nesterov = use_nesterov
        self.exponent = exponent
        self.beta2 = beta2
        self.epsilon = epsilon

    def _slot_names(self) -> list[str]:
        return ["accumulators", "momenta"]

    def _slot_initializers(self) -> list[Callable[..., np.ndarray]]:
        return [_Constant(0.0), _Constant(0.0)]


class Adam(_Optimizer):
    """Adam for TPU embeddings; slots ``momenta`` and ``velocities``.

    Update::

        momenta = beta_1 * momenta + (1 - beta_1) * g
        velocities = beta_2 * velocities + (1 - beta_2) * g ** 2
        w -= lr * momenta / sqrt(velocities + epsilon ** 2)   if sum_inside_sqrt
        w -= lr * momenta / (sqrt(velocities) + epsilon)      otherwise

    There is no bias correction on the TPU; TensorFlow's advice is a dynamic learning rate
    ``lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)`` at step ``t``. With ``lazy_adam`` (the
    default), rows not looked up in a step are not updated at all.

    Args:
        learning_rate: a float, or a zero-argument callable for a dynamic rate.
        beta_1: decay of the first-moment estimate; in ``[0, 1)``.
        beta_2: decay of the second-moment estimate; in ``[0, 1)``.
        epsilon: the denominator's guard; must be > 0.
        lazy_adam: update only the rows looked up; ``False`` requires gradient accumulation.
        sum_inside_sqrt: use ``sqrt(v + epsilon ** 2)`` rather than ``sqrt(v) + epsilon``.
        use_gradient_accumulation: see :class:`_Optimizer`.
        clip_weight_min: see :class:`_Optimizer`.
        clip_weight_max: see :class:`_Optimizer`.
        weight_decay_factor: see :class:`_Optimizer`.
        multiply_weight_decay_factor_by_learning_rate: see :class:`_Optimizer`.
        slot_variable_creation_fn: see :class:`_Optimizer`.
        clipvalue: see :class:`_Optimizer`.
        low_dimensional_packing_status: see :class:`_Optimizer`.

    Raises:
        ConfigError: after the checks of :class:`_Optimizer`, in order: ``beta_1`` outside
            ``[0, 1)``; ``beta_2`` outside ``[0, 1)``; ``epsilon <= 0``; ``lazy_adam=False`` with
            ``use_gradient_accumulation=False``.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-07,
        lazy_adam: bool = True,
        sum_inside_sqrt: bool = True,
        use_gradient_accumulation: bool = True,
        clip_weight_min: float | None = None,
        clip_weight_max: float | None = None,
        weight_decay_factor: float | None = None,
        multiply_weight_decay_factor_by_learning_rate: bool | None = None,
        slot_variable_creation_fn: SlotVariableCreationFn | None = None,
        clipvalue: ClipValue | None = None,
        low_dimensional_packing_status: bool = False,
    ) -> None:
        super().__init__(
            learning_rate,
            use_gradient_accumulation,
            clip_weight_min,
            clip_weight_max,
            weight_decay_factor,
            multiply_weight_decay_factor_by_learning_rate,
            clipvalue,
            slot_variable_creation_fn,
            low_dimensional_packing_status,
        )
        if beta_1 < 0.0 or beta_1 >= 1.0:
            raise ConfigError(f"Argument `beta_1` must be >= 0 and < 1. Received: {beta_1}.")
        if beta_2 < 0.0 or beta_2 >= 1.0:
            # TensorFlow 2.21 prints the value of beta_1 here (a bug); we print beta_2.
            raise ConfigError(f"Argument `beta_2` must be >= 0 and < 1. Received: {beta_2}.")
        if epsilon <= 0.0:
            raise ConfigError(f"epsilon must be positive; got {epsilon}.")
        if not use_gradient_accumulation and not lazy_adam:
            # TensorFlow's message ends "Set `use_gradient_accumulation` to False." (a slip);
            # the fix is to set it to True, and that is what we say.
            raise ConfigError(
                "When disabling lazy Adam (`lazy_adam=False`), gradient accumulation must be "
                "used. Set `use_gradient_accumulation` to True."
            )
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.lazy_adam = lazy_adam
        self.sum_inside_sqrt = sum_inside_sqrt

    def _slot_names(self) -> list[str]:
        return ["momenta", "velocities"]

    def _slot_initializers(self) -> list[Callable[..., np.ndarray]]:
        return [_Constant(0.0), _Constant(0.0)]


class FTRL(_Optimizer):
    """FTRL-Proximal for TPU embeddings; slots ``accumulators`` and ``linears``.

    Update (Algorithm 1 of https://research.google.com/pubs/archive/41159.pdf), with
    ``p = -learning_rate_power`` (0.5 by default, a square root)::

        new_accumulators = accumulators + g ** 2
        linears += g - (new_accumulators ** p - accumulators ** p) / lr * w
        quadratic = (new_accumulators ** p + beta) / lr + 2 * l2_regularization_strength
        w = (sign(linears) * l1_regularization_strength - linears) / quadratic
            if |linears| > l1_regularization_strength else 0
        accumulators = new_accumulators

    ``beta / (2 * lr)`` added to ``l2`` gives the same rule as TensorFlow's other FTRL
    implementations. With ``multiply_linear_by_learning_rate``, the ``linears`` slot stores
    ``linear * lr`` (equivalent for a constant rate, and safe for rates near zero).

    Args:
        learning_rate: a float, or a zero-argument callable for a dynamic rate.
        learning_rate_power: the power of the accumulator in the per-coordinate rate; <= 0 in
            practice (not validated).
        l1_regularization_strength: L1 strength; >= 0 in practice (not validated).
        l2_regularization_strength: L2 strength; >= 0 in practice (not validated).
        beta: FTRL's beta, added to the accumulator root.
        initial_accumulator_value: the initial value of ``accumulators``; must be > 0 (even with
            ``allow_zero_accumulator``).
        use_gradient_accumulation: see :class:`_Optimizer`.
        clip_weight_min: see :class:`_Optimizer`.
        clip_weight_max: see :class:`_Optimizer`.
        weight_decay_factor: see :class:`_Optimizer`.
        multiply_weight_decay_factor_by_learning_rate: see :class:`_Optimizer`.
        slot_variable_creation_fn: see :class:`_Optimizer`.
        clipvalue: see :class:`_Optimizer`.
        multiply_linear_by_learning_rate: store ``linear * lr`` in the ``linears`` slot.
        allow_zero_accumulator: use formulas that tolerate zero or tiny accumulators.
        low_dimensional_packing_status: see :class:`_Optimizer`.

    Raises:
        ConfigError: ``initial_accumulator_value <= 0``, after the checks of :class:`_Optimizer`.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        learning_rate_power: float = -0.5,
        l1_regularization_strength: float = 0.0,
        l2_regularization_strength: float = 0.0,
        beta: float = 0.0,
        initial_accumulator_value: float = 0.1,
        use_gradient_accumulation: bool = True,
        clip_weight_min: float | None = None,
        clip_weight_max: float | None = None,
        weight_decay_factor: float | None = None,
        multiply_weight_decay_factor_by_learning_rate: bool | None = None,
        slot_variable_creation_fn: SlotVariableCreationFn | None = None,
        clipvalue: ClipValue | None = None,
        multiply_linear_by_learning_rate: bool = False,
        allow_zero_accumulator: bool = False,
        low_dimensional_packing_status: bool = False,
    ) -> None:
        super().__init__(
            learning_rate,
            use_gradient_accumulation,
            clip_weight_min,
            clip_weight_max,
            weight_decay_factor,
            multiply_weight_decay_factor_by_learning_rate,
            clipvalue,
            slot_variable_creation_fn,
            low_dimensional_packing_status,
        )
        if initial_accumulator_value <= 0:
            raise ConfigError(
                "Argument `initial_accumulator_value` must be a positive float. "
                f"Received: {initial_accumulator_value}"
            )
        self.initial_accumulator_value = initial_accumulator_value
        self.learning_rate_power = learning_rate_power
        self.l1_regularization_strength = l1_regularization_strength
        self.l2_regularization_strength = l2_regularization_strength
        self.beta = beta
        self.multiply_linear_by_learning_rate = multiply_linear_by_learning_rate
        self.allow_zero_accumulator = allow_zero_accumulator

    def _slot_names(self) -> list[str]:
        return ["accumulators", "linears"]

    def _slot_initializers(self) -> list[Callable[..., np.ndarray]]:
        return [_Constant(self.initial_accumulator_value), _Constant(0.0)]
