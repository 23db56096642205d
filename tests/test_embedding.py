"""TPUEmbeddingForServing: construction, building, tables and slots (SEMANTICS.md §2).

Each case pins TensorFlow 2.21's behaviour: feature and table order, the names and optimizers
written back onto the caller's TableConfigs, the errors, build-once semantics, the initializer's
calling convention, and which slot variables each optimizer creates with which initial values.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pytest

import embserve as es


class Pair(NamedTuple):
    second: Any
    first: Any


class RecordingInit:
    """An initializer that records its calls and returns row-id values."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        self.calls.append((args, kwargs))
        shape = args[0]
        return np.repeat(np.arange(shape[0], dtype=np.float32)[:, None], shape[1], axis=1)


def tc(vocab: int = 4, dim: int = 2, **kwargs: Any) -> Any:
    kwargs.setdefault("initializer", es.RowIdInitializer())
    return es.TableConfig(vocab, dim, **kwargs)


# ---------------------------------------------------------------------------------------------
# Construction (§2.1)


class TestConstruction:
    def test_optimizer_argument_is_required(self):
        with pytest.raises(TypeError):
            es.TPUEmbeddingForServing(es.FeatureConfig(tc()))  # type: ignore[call-arg]

    def test_table_order_is_first_appearance_in_feature_order(self):
        t1, t2, t3 = tc(name="t1"), tc(name="t2"), tc(name="t3")
        config = {
            "b": es.FeatureConfig(t1),
            "a": [es.FeatureConfig(t3), (es.FeatureConfig(t2), es.FeatureConfig(t1))],
            "c": Pair(second=es.FeatureConfig(t2), first=es.FeatureConfig(tc(name="t4"))),
        }
        emb = es.TPUEmbeddingForServing(config, None)
        # sorted keys: a/0 (t3), a/1/0 (t2), a/1/1 (t1), b (t1), c/second (t2), c/first (t4)
        assert [t.name for t in emb.embedding_tables] == ["t3", "t2", "t1", "t4"]
        assert list(emb.variables) == ["t3", "t2", "t1", "t4"]

    def test_auto_names_written_back_by_table_index(self):
        t_named = tc(name="x")
        t_a, t_b = tc(), tc()
        config = [es.FeatureConfig(t_named), es.FeatureConfig(t_a), es.FeatureConfig(t_b)]
        emb = es.TPUEmbeddingForServing(config, None)
        assert (t_named.name, t_a.name, t_b.name) == ("x", "table_1", "table_2")
        assert list(emb.variables) == ["x", "table_1", "table_2"]

    def test_auto_names_follow_sorted_keys(self):
        t_z, t_a = tc(), tc()
        es.TPUEmbeddingForServing({"z": es.FeatureConfig(t_z), "a": es.FeatureConfig(t_a)}, None)
        assert (t_a.name, t_z.name) == ("table_0", "table_1")

    def test_identical_table_configs_are_two_tables(self):
        t_a, t_b = tc(), tc()
        emb = es.TPUEmbeddingForServing([es.FeatureConfig(t_a), es.FeatureConfig(t_b)], None)
        assert list(emb.embedding_tables) == [t_a, t_b]
        assert (t_a.name, t_b.name) == ("table_0", "table_1")

    def test_shared_table_config_is_one_table(self):
        shared = tc(vocab=5)
        config = {"a": es.FeatureConfig(shared), "b": es.FeatureConfig(shared, name="b")}
        emb = es.TPUEmbeddingForServing(config, None)
        assert list(emb.embedding_tables) == [shared]
        assert list(emb.variables) == ["table_0"]
        out = emb({"a": np.array([1]), "b": np.array([3])})
        np.testing.assert_array_equal(out["a"], [[1, 1]])
        np.testing.assert_array_equal(out["b"], [[3, 3]])

    def test_duplicate_names(self):
        config = [es.FeatureConfig(tc(name="same")), es.FeatureConfig(tc(name="same"))]
        with pytest.raises(ValueError, match="unique name") as info:
            es.TPUEmbeddingForServing(config, None)
        assert isinstance(info.value, es.EmbserveError)

    def test_auto_name_can_collide_and_stays_written(self):
        first, second = tc(name="table_1"), tc()
        with pytest.raises(ValueError, match="unique name"):
            es.TPUEmbeddingForServing([es.FeatureConfig(first), es.FeatureConfig(second)], None)
        assert second.name == "table_1"

    def test_global_optimizer_fills_tables_and_is_written_back(self):
        t_a, t_b = tc(), tc(optimizer=es.Adam())
        opt = es.Adagrad(initial_accumulator_value=0.7)
        es.TPUEmbeddingForServing([es.FeatureConfig(t_a), es.FeatureConfig(t_b)], opt)
        assert t_a.optimizer is opt
        assert isinstance(t_b.optimizer, es.Adam)

    def test_written_back_optimizer_survives_a_second_object(self):
        t = tc()
        es.TPUEmbeddingForServing(es.FeatureConfig(t), es.Adagrad())
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(t), es.Adam())
        assert list(emb.variables["table_0"]) == ["parameters", "accumulators"]
        assert t.name == "table_0"

    def test_none_optimizer_is_written_as_none(self):
        t = tc()
        es.TPUEmbeddingForServing(es.FeatureConfig(t), None)
        assert t.optimizer is None

    @pytest.mark.parametrize("bad", ["sgd", 3, object(), 0.1])
    def test_unsupported_global_optimizer(self, bad):
        with pytest.raises(ValueError, match="unsupported optimizer") as info:
            es.TPUEmbeddingForServing(es.FeatureConfig(tc()), bad)
        assert isinstance(info.value, es.EmbserveError)

    @pytest.mark.parametrize("bad", ["sgd", 3, object()])
    def test_unsupported_table_optimizer(self, bad):
        t = tc(optimizer=bad)
        with pytest.raises(ValueError, match="unsupported optimizer"):
            es.TPUEmbeddingForServing(es.FeatureConfig(t), es.SGD())
        with pytest.raises(ValueError, match="unsupported optimizer"):
            es.TPUEmbeddingForServing(es.FeatureConfig(tc(optimizer=bad)), None)

    def test_mutations_happen_before_a_later_failure(self):
        t_ok, t_bad = tc(), tc(optimizer="adam")
        with pytest.raises(ValueError, match="unsupported optimizer"):
            es.TPUEmbeddingForServing([es.FeatureConfig(t_ok), es.FeatureConfig(t_bad)], None)
        assert t_ok.name == "table_0"

    @pytest.mark.parametrize(
        "config",
        [
            None,
            "feature",
            [None],
            {"a": None},
            {"a": "x"},
            [tc()],
            {"ok": None, "a": [1]},
        ],
        ids=["None", "str", "list-None", "dict-None", "dict-str", "TableConfig", "int-leaf"],
    )
    def test_non_feature_config_leaves(self, config):
        with pytest.raises(es.FeatureConfigTypeError) as info:
            es.TPUEmbeddingForServing(config, None)
        assert isinstance(info.value, AttributeError)
        assert isinstance(info.value, es.ConfigError)

    def test_non_feature_config_leaf_in_serving_function(self):
        t = tc(name="t")
        with pytest.raises(AttributeError):
            es.serving_embedding_lookup({"a": np.array([1])}, None, {t: np.zeros((4, 2))}, {"a": t})

    def test_empty_configs(self):
        for config, features in (({}, {}), ([], [])):
            emb = es.TPUEmbeddingForServing(config, None)
            assert emb.embedding_tables == {}
            assert emb.variables == {}
            assert emb(features) == features

    def test_unsortable_keys(self):
        with pytest.raises(TypeError):
            es.TPUEmbeddingForServing(
                {1: es.FeatureConfig(tc()), "a": es.FeatureConfig(tc())}, None
            )

    def test_sparsecore_restore_info_is_accepted(self):
        emb = es.TPUEmbeddingForServing(
            es.FeatureConfig(tc()), None, experimental_sparsecore_restore_info={}
        )
        np.testing.assert_array_equal(emb(np.array([2])), [[2, 2]])


# ---------------------------------------------------------------------------------------------
# Building (§2.2) and initial values (§2.4)


class TestBuild:
    def test_construction_builds_nothing(self):
        init = RecordingInit()
        es.TPUEmbeddingForServing(es.FeatureConfig(tc(initializer=init)), None)
        assert init.calls == []

    def test_build_is_idempotent(self):
        init = RecordingInit()
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(tc(initializer=init, name="t")), None)
        emb.build()
        first = emb.variables["t"]["parameters"]
        emb.build()
        emb.build()
        assert len(init.calls) == 1
        assert emb.variables["t"]["parameters"] is first

    @pytest.mark.parametrize(
        "trigger",
        [
            lambda emb: emb.embedding_tables,
            lambda emb: emb.variables,
            lambda emb: emb(np.array([1])),
            lambda emb: emb.embedding_lookup(np.array([1])),
        ],
        ids=["embedding_tables", "variables", "call", "embedding_lookup"],
    )
    def test_implicit_build(self, trigger):
        init = RecordingInit()
        t = tc(initializer=init, name="t")
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(t), None)
        trigger(emb)
        assert len(init.calls) == 1
        trigger(emb)
        emb.build()
        assert len(init.calls) == 1
        np.testing.assert_array_equal(emb.embedding_tables[t][:, 0], [0, 1, 2, 3])

    def test_initializer_calling_convention(self):
        init = RecordingInit()
        shared_init = RecordingInit()
        t1 = es.TableConfig(7, 3, initializer=init)
        t2 = es.TableConfig(5, 2, initializer=shared_init)
        es.TPUEmbeddingForServing(
            [es.FeatureConfig(t1), es.FeatureConfig(t2), es.FeatureConfig(t2)], None
        ).build()
        assert len(init.calls) == 1
        assert len(shared_init.calls) == 1
        args, kwargs = init.calls[0]
        assert len(args) == 1
        assert tuple(args[0]) == (7, 3)
        assert list(kwargs) == ["dtype"]
        assert np.dtype(kwargs["dtype"]) == np.float32

    def test_initializer_without_dtype_keyword(self):
        def init(shape):
            return np.zeros(shape, np.float32)

        emb = es.TPUEmbeddingForServing(es.FeatureConfig(tc(initializer=init)), None)
        with pytest.raises(TypeError):
            emb.build()

    def test_initializer_wrong_shape(self):
        def init(shape, dtype):
            return np.zeros((4, 2), np.float32)

        emb = es.TPUEmbeddingForServing(es.FeatureConfig(tc(vocab=3, initializer=init)), None)
        with pytest.raises(ValueError, match="shape"):
            emb.build()

    def test_float64_initializer_result_becomes_float32(self):
        def init(shape, dtype):
            return np.full(shape, 1 / 3, dtype=np.float64)

        t = tc(initializer=init)
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(t), None)
        table = emb.embedding_tables[t]
        assert table.dtype == np.float32
        np.testing.assert_array_equal(table, np.float32(1 / 3))

    @pytest.mark.parametrize("dtype", [np.float32, np.int32, "int32", "float32"])
    def test_tables_are_float32_whatever_the_config_dtype(self, dtype):
        t = es.TableConfig(6, 3, initializer=es.RowIdInitializer(), dtype=dtype)
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(t), None)
        table = emb.embedding_tables[t]
        assert isinstance(table, np.ndarray)
        assert table.shape == (6, 3)
        assert table.dtype == np.float32
        out = emb(np.array([5]))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, [[5, 5, 5]])

    def test_embedding_tables_keys_are_the_users_objects(self):
        t_b, t_a = tc(name="b"), tc(name="a", vocab=3)
        emb = es.TPUEmbeddingForServing(
            {"x": es.FeatureConfig(t_b), "y": es.FeatureConfig(t_a)}, None
        )
        tables = emb.embedding_tables
        assert isinstance(tables, dict)
        keys = list(tables)
        assert keys[0] is t_b
        assert keys[1] is t_a
        assert tables[t_a].shape == (3, 2)
        assert emb.variables["a"]["parameters"] is tables[t_a]

    def test_default_initializer(self):
        t = es.TableConfig(2000, 16)
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(t), None)
        table = emb.embedding_tables[t]
        assert table.dtype == np.float32
        bound = 2 / math.sqrt(16)
        assert np.all(np.abs(table) < bound)
        assert abs(float(table.std()) - 0.25 * 0.8796) < 0.01
        assert abs(float(table.mean())) < 0.01
        other = es.TPUEmbeddingForServing(es.FeatureConfig(es.TableConfig(2000, 16)), None)
        assert not np.array_equal(table, next(iter(other.embedding_tables.values())))


# ---------------------------------------------------------------------------------------------
# Slots (§2.3)

SLOT_CASES = [
    (es.SGD(), {}),
    (es.Adagrad(), {"accumulators": 0.1}),
    (es.Adagrad(initial_accumulator_value=0.7), {"accumulators": 0.7}),
    (es.AdagradMomentum(), {"accumulators": 0.0, "momenta": 0.0}),
    (es.Adam(), {"momenta": 0.0, "velocities": 0.0}),
    (es.FTRL(), {"accumulators": 0.1, "linears": 0.0}),
    (es.FTRL(initial_accumulator_value=0.3), {"accumulators": 0.3, "linears": 0.0}),
]


class TestSlots:
    @pytest.mark.parametrize(
        ("optimizer", "slots"), SLOT_CASES, ids=lambda x: type(x).__name__ if x else ""
    )
    def test_slots_per_optimizer(self, optimizer, slots):
        t = es.TableConfig(5, 3, initializer=es.RowIdInitializer(), name="t")
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(t), optimizer)
        variables = emb.variables
        assert list(variables) == ["t"]
        assert list(variables["t"]) == ["parameters", *slots]
        for name, value in slots.items():
            slot = variables["t"][name]
            assert isinstance(slot, np.ndarray)
            assert slot.shape == (5, 3)
            assert slot.dtype == np.float32
            np.testing.assert_array_equal(slot, np.float32(value))
        np.testing.assert_array_equal(variables["t"]["parameters"][:, 0], np.arange(5))

    @pytest.mark.parametrize(("optimizer", "slots"), SLOT_CASES)
    def test_per_table_optimizer_with_global_none(self, optimizer, slots):
        t_own = tc(name="own", optimizer=optimizer)
        t_none = tc(name="none")
        emb = es.TPUEmbeddingForServing([es.FeatureConfig(t_own), es.FeatureConfig(t_none)], None)
        assert list(emb.variables["own"]) == ["parameters", *slots]
        assert list(emb.variables["none"]) == ["parameters"]

    def test_global_and_per_table_optimizers(self):
        t0 = tc()
        tb = tc(name="tb", optimizer=es.Adam())
        emb = es.TPUEmbeddingForServing(
            {"a": es.FeatureConfig(t0), "b": es.FeatureConfig(tb)},
            es.Adagrad(initial_accumulator_value=0.7),
        )
        v = emb.variables
        assert list(v) == ["table_0", "tb"]
        assert list(v["table_0"]) == ["parameters", "accumulators"]
        np.testing.assert_array_equal(v["table_0"]["accumulators"], np.float32(0.7))
        assert list(v["tb"]) == ["parameters", "momenta", "velocities"]

    def test_no_optimizer_no_slots(self):
        emb = es.TPUEmbeddingForServing([es.FeatureConfig(tc()), es.FeatureConfig(tc())], None)
        assert emb.variables == {
            "table_0": {"parameters": emb.variables["table_0"]["parameters"]},
            "table_1": {"parameters": emb.variables["table_1"]["parameters"]},
        }

    def test_slot_variable_creation_fn(self):
        seen = {}

        def create(table, slot_names, slot_initializers):
            seen["args"] = (table.shape, list(slot_names), len(slot_initializers))
            return {name: np.full(table.shape, 5.0, np.float32) for name in slot_names}

        opt = es.Adagrad(slot_variable_creation_fn=create)
        emb = es.TPUEmbeddingForServing(es.FeatureConfig(tc(name="t")), opt)
        np.testing.assert_array_equal(emb.variables["t"]["accumulators"], 5.0)
        assert seen["args"] == ((4, 2), ["accumulators"], 1)
