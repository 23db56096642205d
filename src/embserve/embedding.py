"""``TPUEmbeddingForServing``: TensorFlow's serving object, with numpy tables.

Construction follows TensorFlow 2.21 step by step (SEMANTICS.md §2): flatten the features in
``tf.nest`` order, collect the tables in order of first appearance (by identity), fill each
table's missing optimizer with the global one and its missing name with ``table_{i}`` — written
back onto the caller's ``TableConfig`` objects, as TensorFlow does — and reject duplicate names
and foreign optimizers. ``build()`` creates every table with its initializer and, when the table
has an optimizer, its slot variables with their initial values.

Tables (and slots) are numpy arrays, or :class:`~embserve.tables.StackedTable` s when restored
from a SparseCore (``TPUEmbeddingV2``) checkpoint without ``copy=True``: those are served
straight from the checkpoint's stacks and are array-like (``shape``, ``dtype``, indexing;
``np.asarray(table)`` gives a private unstacked copy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from embserve.config import FeatureConfig, TableConfig
from embserve.errors import ConfigError
from embserve.lookup import LookupPlan
from embserve.optimizers import _Optimizer
from embserve.tables import StackedTable

__all__ = ["TPUEmbeddingForServing"]

# A table or slot value: an array, or a logical table inside a SparseCore stack.
Table = np.ndarray | StackedTable


def _initial_value(
    initializer: Callable[..., Any], shape: tuple[int, int], what: str
) -> np.ndarray:
    """Call a TensorFlow-style initializer as TensorFlow does, ``init(shape, dtype=float32)``."""
    value = np.asarray(initializer(shape, dtype=np.float32))
    if value.shape != shape:
        raise ConfigError(
            f"{what}: the initial value's shape ({value.shape}) is not compatible with the "
            f"explicitly supplied `shape` argument ({shape})"
        )
    return np.ascontiguousarray(value, dtype=np.float32)


class TPUEmbeddingForServing:
    """The TPUEmbedding mid-level API on the CPU, for serving.

    A drop-in for ``tf.tpu.experimental.embedding.TPUEmbeddingForServing``: build it from the
    same ``feature_config`` the model was trained with, restore the training checkpoint, and
    call it with dense, sparse or ragged id features to get their (combined) embeddings.

    Args:
        feature_config: a ``FeatureConfig`` or a nested structure (dicts, lists, tuples,
            namedtuples) of them.
        optimizer: the global embedding optimizer (``SGD``, ``Adagrad``, ``AdagradMomentum``,
            ``Adam``, ``FTRL``) or ``None``. It decides which slot variables exist, so that a
            training checkpoint's slots can be restored; ``None`` creates no slots, which saves
            memory when serving. A table's own ``optimizer`` overrides it. Required, as in
            TensorFlow (pass ``None`` explicitly).
        experimental_sparsecore_restore_info: accepted for compatibility; unused on the CPU.

    Raises:
        FeatureConfigTypeError: a leaf of ``feature_config`` is not a ``FeatureConfig``.
        ConfigError: an optimizer is not an embedding optimizer, or two tables share a name.
    """

    def __init__(
        self,
        feature_config: FeatureConfig | Any,
        optimizer: _Optimizer | None,
        experimental_sparsecore_restore_info: dict[str, Any] | None = None,
    ) -> None:
        self._feature_config = feature_config
        self._plan = LookupPlan(feature_config)
        self._optimizer = optimizer
        self._experimental_sparsecore_restore_info = experimental_sparsecore_restore_info

        tables: list[TableConfig] = []
        seen: set[int] = set()
        for path in self._plan.paths:
            table = self._plan.features[path].table
            if id(table) not in seen:
                seen.add(id(table))
                tables.append(table)
        names: set[Any] = set()
        for i, table in enumerate(tables):
            if table.optimizer is None:
                table.optimizer = optimizer
            if table.optimizer is not None and not isinstance(table.optimizer, _Optimizer):
                raise ConfigError(
                    f"{type(table.optimizer)} is an unsupported optimizer class. Please pass an "
                    "instance of one of the optimizer classes under "
                    "tf.tpu.experimental.embedding (embserve.SGD, Adagrad, AdagradMomentum, "
                    "Adam or FTRL)."
                )
            if table.name is None:
                table.name = f"table_{i}"
            if table.name in names:
                raise ConfigError(
                    f"Tables must have a unique name. Multiple tables with name {table.name} found."
                )
            names.add(table.name)
        self._table_configs: list[TableConfig] = tables
        self._variables: dict[Any, dict[str, Table]] = {}
        self._tables: dict[TableConfig, Table] = {}
        self._built = False

    def build(self) -> None:
        """Create the tables and their slot variables (once; later calls do nothing)."""
        if self._built:
            return
        variables: dict[Any, dict[str, Table]] = {}
        for table in self._table_configs:
            shape = (table.vocabulary_size, table.dim)
            params = _initial_value(table.initializer, shape, f"table {table.name!r}")
            slots: dict[str, Table] = {"parameters": params}
            opt = table.optimizer
            if opt is not None:
                slot_names = opt._slot_names()
                slot_inits = opt._slot_initializers()
                if opt.slot_variable_creation_fn is not None:
                    created = opt.slot_variable_creation_fn(params, slot_names, slot_inits)
                    for name in slot_names:
                        slots[name] = np.asarray(created[name])
                else:
                    for name, init in zip(slot_names, slot_inits, strict=True):
                        slots[name] = _initial_value(init, shape, f"slot {table.name}/{name}")
            variables[table.name] = slots
        self._variables = variables
        self._tables = {t: variables[t.name]["parameters"] for t in self._table_configs}
        self._built = True

    def _table_slot_names(self, table: TableConfig) -> list[str]:
        """Slot names the table carries: its optimizer's, in TensorFlow's order."""
        return [] if table.optimizer is None else list(table.optimizer._slot_names())

    def _set_variables(self, variables: Mapping[Any, Mapping[str, Table]]) -> None:
        """Install restored tables and slots (``{table name: {"parameters": ..., slot: ...}}``).

        Used by checkpoint restore: no initializer runs, so restoring a memory-mapped 40 GB
        table never allocates it. Values are arrays or :class:`~embserve.tables.StackedTable` s
        (a SparseCore checkpoint restored in place), installed as they are. The caller has
        checked names, shapes and dtypes.
        """
        self._variables = {name: dict(slots) for name, slots in variables.items()}
        self._tables = {t: variables[t.name]["parameters"] for t in self._table_configs}
        self._plan.forget_tables()
        self._built = True

    @property
    def embedding_tables(self) -> dict[TableConfig, Any]:
        """The tables, keyed by their ``TableConfig`` object (identity), in table order.

        Each is a numpy array, or, restored from a SparseCore checkpoint without ``copy=True``,
        a :class:`~embserve.tables.StackedTable`: array-like with TensorFlow's shape
        ``(vocabulary_size, dim)``, read-only, served in place from the checkpoint's stack;
        ``np.asarray(table)`` gives its rows as a private array (TensorFlow's
        ``embedding_tables[t].numpy()``). Typed ``Any`` for that reason: ``np.ndarray |
        StackedTable`` (:data:`Table`).
        """
        self.build()
        return dict(self._tables)

    @property
    def variables(self) -> dict[Any, dict[str, Any]]:
        """``{table name: {"parameters": table, slot name: slot}}``, as TensorFlow 2.21 keys it
        (by name, although its docstring says by TableConfig). Values as in
        :attr:`embedding_tables`."""
        self.build()
        return self._variables

    def embedding_lookup(self, features: Any, weights: Any | None = None) -> Any:
        """Look up ``features`` (optionally ``weights``) in this object's tables.

        See :func:`embserve.serving_embedding_lookup` for the accepted inputs and the errors.

        Returns:
            float32 arrays in the structure of ``features``.
        """
        if not self._built:
            self.build()
        return self._plan.run(features, weights, self._tables)

    def __call__(self, features: Any, weights: Any | None = None) -> Any:
        """Same as :meth:`embedding_lookup`."""
        return self.embedding_lookup(features, weights)
