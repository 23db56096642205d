"""Restoring TensorFlow-written embedding checkpoints and saving ones TensorFlow reads
(embserve.checkpointing through embserve.train)."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es
from embserve.checkpoint import BundleReader, ObjectGraph
from embserve.checkpointing import find_embedding_tables
from tests.checkpoint._data import FIXTURES, expected, record_array

OPTIMIZERS: dict[str, Any] = {
    "tpu_none": None,
    "tpu_adagrad": es.Adagrad(),
    "tpu_adam": es.Adam(),
}


def _model(shapes: dict[str, tuple[int, int]], optimizer: Any) -> es.TPUEmbeddingForServing:
    """A serving object with one feature per table, tables named and shaped as given."""
    fc = {
        f"f_{name}": es.FeatureConfig(es.TableConfig(v, d, name=name))
        for name, (v, d) in shapes.items()
    }
    return es.TPUEmbeddingForServing(fc, optimizer)


def _tf_values(fixture: str) -> dict[str, np.ndarray]:
    (records,) = expected(fixture)["checkpoints"].values()
    return {k: v for k, r in records["tensors"].items() if (v := record_array(r)) is not None}


def _shapes(fixture: str) -> dict[str, tuple[int, int]]:
    reader = BundleReader(FIXTURES / fixture)
    return {t.table: (t.shape[0], t.shape[1]) for t in find_embedding_tables(reader)}


@pytest.mark.parametrize("fixture", sorted(OPTIMIZERS))
def test_restore_matches_tensorflow_values(fixture: str) -> None:
    opt = OPTIMIZERS[fixture]
    emb = _model(_shapes(fixture), opt)
    status = es.train.Checkpoint(embedding=emb).restore(FIXTURES / fixture)
    status.assert_consumed().assert_existing_objects_matched()
    tf_values = _tf_values(fixture)
    for name, slots in emb.variables.items():
        for slot, value in slots.items():
            edge = name if slot == "parameters" else f"{name}.S{slot}"
            np.testing.assert_array_equal(
                value, tf_values[f"embedding/{edge}/.ATTRIBUTES/VARIABLE_VALUE"]
            )
            assert not value.flags.writeable  # a read-only view of the data file
    want_slots = [] if opt is None else opt._slot_names()
    assert all(list(s) == ["parameters", *want_slots] for s in emb.variables.values())


def test_lookup_after_restore_reads_the_restored_rows() -> None:
    emb = _model(_shapes("tpu_none"), None)
    es.train.Checkpoint(embedding=emb).restore(FIXTURES / "tpu_none")
    table = _tf_values("tpu_none")["embedding/t0/.ATTRIBUTES/VARIABLE_VALUE"]
    out = emb({"f_t0": np.array([3, 0])})
    np.testing.assert_array_equal(out["f_t0"], table[[3, 0]])


def test_restore_does_not_run_initializers() -> None:
    def boom(shape: Any, dtype: Any = None) -> np.ndarray:
        raise AssertionError("initializer called during restore")

    shapes = _shapes("tpu_none")
    fc = {
        n: es.FeatureConfig(es.TableConfig(*s, name=n, initializer=boom)) for n, s in shapes.items()
    }
    emb = es.TPUEmbeddingForServing(fc, None)
    es.train.Checkpoint(embedding=emb).restore(FIXTURES / "tpu_none")
    assert set(emb.variables) == set(shapes)


def test_slots_ignored_without_optimizer_and_reported_by_assert_consumed() -> None:
    emb = _model(_shapes("tpu_adam"), None)
    status = es.train.Checkpoint(embedding=emb).restore(FIXTURES / "tpu_adam")
    assert all(list(s) == ["parameters"] for s in emb.variables.values())
    status.assert_existing_objects_matched()
    with pytest.raises(es.CheckpointMismatchError, match="momenta"):
        status.assert_consumed()


def test_checkpoint_with_a_keras_model_restores_its_embedding_part() -> None:
    reader = BundleReader(FIXTURES / "keras")
    found = find_embedding_tables(reader)
    assert {t.object_path for t in found} == {("embedding",)}
    assert all(set(t.slots) == {"accumulators"} for t in found)
    emb = _model({t.table: (t.shape[0], t.shape[1]) for t in found}, es.Adagrad())
    status = es.train.Checkpoint(embedding=emb).restore(FIXTURES / "keras")
    status.assert_existing_objects_matched()
    with pytest.raises(es.CheckpointMismatchError, match="not restored"):
        status.assert_consumed()  # the model's and the Keras optimizer's values


def test_mismatches_name_the_table_and_key() -> None:
    shapes = _shapes("tpu_none")
    bad = dict(shapes, t0=(shapes["t0"][0] + 1, shapes["t0"][1]))
    with pytest.raises(es.CheckpointMismatchError, match=r"table 't0'.*embedding/t0/"):
        es.train.Checkpoint(embedding=_model(bad, None)).restore(FIXTURES / "tpu_none")
    missing = dict(shapes, extra=(4, 2))
    with pytest.raises(es.CheckpointMismatchError, match="'extra'"):
        es.train.Checkpoint(embedding=_model(missing, None)).restore(FIXTURES / "tpu_none")
    with pytest.raises(es.CheckpointMismatchError, match="accumulators"):
        es.train.Checkpoint(embedding=_model(shapes, es.Adagrad())).restore(FIXTURES / "tpu_none")
    with pytest.raises(es.CheckpointMismatchError, match="no object 'emb'"):
        es.train.Checkpoint(emb=_model(shapes, None)).restore(FIXTURES / "tpu_none")


def test_a_failed_restore_leaves_the_object_as_it_was() -> None:
    shapes = _shapes("tpu_none")
    emb = _model(dict(shapes, extra=(4, 2)), None)
    before = {n: v["parameters"].copy() for n, v in emb.variables.items()}
    with pytest.raises(es.CheckpointMismatchError):
        es.train.Checkpoint(embedding=emb).restore(FIXTURES / "tpu_none")
    for name, value in before.items():
        np.testing.assert_array_equal(emb.variables[name]["parameters"], value)


def test_name_based_checkpoint_has_no_objects() -> None:
    emb = _model({"t0": (10, 4)}, None)
    with pytest.raises(es.CheckpointMismatchError, match="no object graph"):
        es.train.Checkpoint(embedding=emb).restore(FIXTURES / "partitioned" / "model.ckpt")


def test_missing_checkpoint() -> None:
    emb = _model({"t0": (3, 2)}, None)
    with pytest.raises(es.CheckpointNotFoundError):
        es.train.Checkpoint(embedding=emb).restore("/nonexistent/ckpt-1")
    with pytest.raises(FileNotFoundError):
        es.train.Checkpoint(embedding=emb).restore(os.devnull + "x")


@pytest.mark.parametrize("optimizer", [None, es.Adagrad(0.1, 0.3), es.Adam(), es.FTRL()])
def test_save_restore_round_trip(tmp_path: Path, optimizer: Any) -> None:
    emb = _model({"a": (13, 3), "b": (5, 7)}, optimizer)
    rng = np.random.default_rng(0)
    for slots in emb.variables.values():
        for value in slots.values():
            value[...] = rng.standard_normal(value.shape)
    ck = es.train.Checkpoint(embedding=emb)
    first = ck.save(tmp_path / "ckpt")
    second = ck.save(tmp_path / "ckpt")
    assert (first, second) == (f"{tmp_path}/ckpt-1", f"{tmp_path}/ckpt-2")
    assert es.train.latest_checkpoint(tmp_path) == second
    emb2 = _model({"a": (13, 3), "b": (5, 7)}, optimizer)
    ck2 = es.train.Checkpoint(embedding=emb2)
    ck2.restore(tmp_path).assert_consumed()
    assert ck2.save_counter == 2
    for name, slots in emb.variables.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(emb2.variables[name][slot], value)
    names = dict(es.train.list_variables(tmp_path))
    assert names["embedding/a/.ATTRIBUTES/VARIABLE_VALUE"] == [13, 3]
    assert names["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == []
    reader = es.train.load_checkpoint(second)
    assert reader.get_variable_to_dtype_map()["embedding/b/.ATTRIBUTES/VARIABLE_VALUE"] == "float32"
    assert reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")


@pytest.mark.parametrize("fixture", sorted(OPTIMIZERS))
def test_rewrite_is_byte_identical_to_tensorflows_files(tmp_path: Path, fixture: str) -> None:
    """Restoring a TF checkpoint and writing it back gives TensorFlow's exact files: the same
    object graph, keys, data order and bytes (so TF restores what we write)."""
    emb = _model(_shapes(fixture), OPTIMIZERS[fixture])
    ck = es.train.Checkpoint(embedding=emb)
    ck.restore(FIXTURES / fixture)
    prefix = ck.write(tmp_path / "ckpt-1")
    for suffix in (".index", ".data-00000-of-00001"):
        ours = Path(prefix + suffix).read_bytes()
        theirs = (FIXTURES / fixture / f"ckpt-1{suffix}").read_bytes()
        assert ours == theirs, suffix


def test_overwriting_a_mapped_checkpoint_keeps_old_views_valid(tmp_path: Path) -> None:
    emb = _model({"a": (50, 8)}, None)
    emb.variables["a"]["parameters"][...] = 1.0
    ck = es.train.Checkpoint(embedding=emb)
    prefix = ck.write(tmp_path / "live")
    served = _model({"a": (50, 8)}, None)
    es.train.Checkpoint(embedding=served).restore(prefix)
    view = served.variables["a"]["parameters"]
    emb.variables["a"]["parameters"][...] = 2.0
    ck.write(prefix)  # same prefix, while `view` maps the old data file
    assert float(view.sum()) == 50 * 8 * 1.0
    assert float(served({"f_a": np.array([0])})["f_a"].sum()) == 8.0
    fresh = _model({"a": (50, 8)}, None)
    es.train.Checkpoint(embedding=fresh).restore(prefix)
    assert float(fresh.variables["a"]["parameters"].sum()) == 50 * 8 * 2.0


def test_copy_restore_is_writable_and_progress_is_reported(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "tpu_adam", tmp_path / "adam")
    emb = _model(_shapes("tpu_adam"), es.Adam())
    seen: list[tuple[int, int]] = []
    es.train.Checkpoint(embedding=emb).restore(
        tmp_path / "adam", copy=True, verify=True, progress=lambda d, t: seen.append((d, t))
    )
    assert all(v.flags.writeable for s in emb.variables.values() for v in s.values())
    assert seen
    assert seen[-1][0] == seen[-1][1]


def test_checkpoint_arguments() -> None:
    with pytest.raises(TypeError, match="TPUEmbeddingForServing"):
        es.train.Checkpoint(model=object())
    with pytest.raises(TypeError, match="root"):
        es.train.Checkpoint(object())
    emb = _model({"a": (3, 2)}, None)
    ck = es.train.Checkpoint(embedding=emb)
    assert ck.embedding is emb
    ck.restore(None).assert_existing_objects_matched()


NT = collections.namedtuple("NT", ["x", "y"])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # feature_config structure -> children of each node under embedding/_feature_config,
        # breadth-first, as TensorFlow 2.21 wrote them (recorded with tools/check_tf_restores.py
        # and a direct run: lists and dicts are wrapped, tuples only when they hold a wrapped
        # container, namedtuples list wrapped children by field name and then by index).
        (lambda a, b: {"z": {"q": a, "p": [b]}, "a": b}, [["z"], ["p"], []]),
        (lambda a, b: [a, [b, (a,)]], [["1"], []]),
        (lambda a, b: (a, {"k": b}), [["1"], []]),
        (lambda a, b: NT([a], [b]), [["x", "y", "0", "1"], [], []]),
        (lambda a, b: {"b": [a], "a": {"c": b}, "c": a}, [["b", "a"], [], []]),
        (lambda a, b: [(a,), ({"k": b},), []], [["1", "2"], ["0"], [], []]),
        (lambda a, b: {"d": (a, b)}, [[]]),
        (lambda a, b: (a, b), None),
        (lambda a, b: a, None),
    ],
)
def test_feature_config_containers_are_written_as_tensorflow_tracks_them(
    tmp_path: Path, make: Any, expected: list[list[str]] | None
) -> None:
    t0, t1 = es.TableConfig(5, 2, name="t0"), es.TableConfig(4, 3, name="t1")
    a, b = es.FeatureConfig(t0), es.FeatureConfig(t1)
    fc = make(a, b)
    emb = es.TPUEmbeddingForServing(fc, None)
    prefix = es.train.Checkpoint(embedding=emb).write(tmp_path / "c")
    graph = ObjectGraph.from_reader(BundleReader(prefix))
    assert graph is not None
    node = graph.find(["embedding", "_feature_config"])
    if expected is None:
        assert node is None
        return
    assert node is not None
    seen, order = {node}, [node]
    for n in order:
        for child in graph.children(n).values():
            if child not in seen:
                seen.add(child)
                order.append(child)
    assert [list(graph.children(n)) for n in order] == expected
    # Node ids are breadth-first over the whole graph, so parents come before children.
    assert all(c > n for n in order for c in graph.children(n).values())


# ---------------------------------------------------------------------------------------------
# Several objects: validate everything, then install (issue 10, item 17)


def _two_object_checkpoint(tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    a, b = _model({"ta": (6, 4)}, None), _model({"tb": (9, 3)}, None)
    rng = np.random.default_rng(5)
    for emb in (a, b):
        for slots in emb.variables.values():
            slots["parameters"][...] = rng.standard_normal(slots["parameters"].shape)
    prefix = es.train.Checkpoint(a=a, b=b).write(tmp_path / "ckpt-1")
    return prefix, {
        "ta": a.variables["ta"]["parameters"].copy(),
        "tb": b.variables["tb"]["parameters"].copy(),
    }


def _assert_untouched(emb: es.TPUEmbeddingForServing, before: dict[str, np.ndarray]) -> None:
    for name, value in before.items():
        got = emb.variables[name]["parameters"]
        np.testing.assert_array_equal(got, value)
        assert got.flags.writeable  # still its own initialised table, not a restored view


@pytest.mark.parametrize("restore", ["checkpoint", "restore_objects"])
def test_multi_object_restore_is_all_or_nothing(tmp_path: Path, restore: str) -> None:
    prefix, stored = _two_object_checkpoint(tmp_path)

    def run(objects: dict[str, es.TPUEmbeddingForServing], **kw: Any) -> frozenset[str]:
        if restore == "checkpoint":
            return es.train.Checkpoint(**objects).restore(prefix, **kw).consumed
        from embserve.checkpointing import restore_objects

        return restore_objects(BundleReader(prefix), objects, **kw)

    # The second object does not match the checkpoint: the first must not be installed.
    first, wrong = _model({"ta": (6, 4)}, None), _model({"tb": (9, 5)}, None)
    before = {"ta": first.variables["ta"]["parameters"].copy()}
    with pytest.raises(es.CheckpointMismatchError, match="'tb'"):
        run({"a": first, "b": wrong})
    _assert_untouched(first, before)

    # The second object's table is damaged (found by its checksum): same.
    info = BundleReader(prefix).info("b/tb/.ATTRIBUTES/VARIABLE_VALUE")
    data = Path(prefix + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[info.offset] ^= 0xFF
    data.write_bytes(bytes(raw))
    first, second = _model({"ta": (6, 4)}, None), _model({"tb": (9, 3)}, None)
    before = {"ta": first.variables["ta"]["parameters"].copy()}
    with pytest.raises(es.CorruptCheckpointError, match="checksum"):
        run({"a": first, "b": second})
    _assert_untouched(first, before)

    # Undamaged: both restored, and the consumed keys are reported.
    raw[info.offset] ^= 0xFF
    data.write_bytes(bytes(raw))
    consumed = run({"a": first, "b": second})
    np.testing.assert_array_equal(first.variables["ta"]["parameters"], stored["ta"])
    np.testing.assert_array_equal(second.variables["tb"]["parameters"], stored["tb"])
    assert {"a/ta/.ATTRIBUTES/VARIABLE_VALUE", "b/tb/.ATTRIBUTES/VARIABLE_VALUE"} <= consumed


def test_restore_objects_reports_progress_over_all_objects(tmp_path: Path) -> None:
    from embserve.checkpointing import restore_objects

    prefix, _ = _two_object_checkpoint(tmp_path)
    seen: list[tuple[int, int]] = []
    objects = {"a": _model({"ta": (6, 4)}, None), "b": _model({"tb": (9, 3)}, None)}
    restore_objects(BundleReader(prefix), objects, progress=lambda d, t: seen.append((d, t)))
    total = (6 * 4 + 9 * 3) * 4
    # The ProgressCounter behaviour every long job shares: the total first, one report per
    # table, the final report once.
    assert seen == [(0, total), (6 * 4 * 4, total), (total, total)]


def test_write_reports_progress_like_every_long_job(tmp_path: Path) -> None:
    emb = _model({"a": (13, 3), "b": (5, 7)}, es.Adagrad(0.1))
    seen: list[tuple[int, int]] = []
    es.train.Checkpoint(embedding=emb).write(
        tmp_path / "ckpt", progress=lambda d, t: seen.append((d, t))
    )
    a, b = 13 * 3 * 4, 5 * 7 * 4  # a table and its accumulator slot each
    total = 2 * (a + b)
    assert seen == [(0, total), (a, total), (2 * a, total), (2 * a + b, total), (total, total)]


def test_a_bad_save_counter_fails_before_any_object_is_installed(tmp_path: Path) -> None:
    from embserve.checkpoint import BundleWriter, ObjectGraph

    prefix, _ = _two_object_checkpoint(tmp_path)
    reader = BundleReader(prefix)
    graph = ObjectGraph.from_reader(reader)
    assert graph is not None
    counter_key = graph.attribute_keys(["save_counter"])["VARIABLE_VALUE"]
    bad = str(tmp_path / "bad-1")
    with BundleWriter(bad) as w:  # the same checkpoint, with a float vector as its counter
        for key in reader:
            value = reader.get_tensor(key)
            w.add(key, np.zeros(2, np.float32) if key == counter_key else value)
    first, second = _model({"ta": (6, 4)}, None), _model({"tb": (9, 3)}, None)
    before = {"ta": first.variables["ta"]["parameters"].copy()}
    ck = es.train.Checkpoint(a=first, b=second)
    with pytest.raises(es.CheckpointMismatchError, match="save counter"):
        ck.restore(bad)
    _assert_untouched(first, before)
    assert ck.save_counter == 0
