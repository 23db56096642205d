"""The ``embserve`` command line (:mod:`embserve.cli`), run in-process on TensorFlow-made fixtures.

``main([...])`` is called directly and its output captured, so the tests see exactly what a user
sees: the listing on stdout, progress and errors on stderr, and the exit code (0 ok, 1 bad
input, 2 usage). Bad input must give one line on stderr and never a traceback. One test runs
``python -m embserve`` as a subprocess to check the entry point itself.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embserve as es
from embserve import train
from embserve.checkpoint import OBJECT_GRAPH_KEY, BundleReader
from embserve.checkpoint.sparsecore import unstack_table
from embserve.checkpointing import find_embedding_tables
from embserve.cli import ProgressBar, format_bytes, main
from embserve.server.config import ServingConfig, parse_config, serving_config_toml
from embserve.server.reloader import Reloader, make_loader
from tests.nested_checkpoints import nest_embedding

FIXTURES = Path(__file__).resolve().parent / "data" / "checkpoints"
SPARSECORE = Path(__file__).resolve().parent / "data" / "sparsecore"

# The TPU fixtures' tables (tools/make_checkpoint_fixtures.py): name -> (vocabulary, dim).
TPU_TABLES = {"t0": (7, 3), "t1": (11, 5)}


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    """``main(argv)`` → (exit code, stdout, stderr)."""
    code = main([os.fspath(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    """stderr is exactly one ``embserve: error: ...`` line containing every fragment."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("embserve: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A private copy of fixture directory ``name`` (tests that damage files use it)."""
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of the byte at ``offset``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# The entry point


def test_python_dash_m_help_runs_as_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embserve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: embserve")
    assert "inspect" in proc.stdout


def test_python_dash_m_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embserve", "inspect", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, "nothing.index")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["inspect"], "required: PATH"),
        (["frobnicate"], "invalid choice"),
        (["inspect", "x", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--help")
    assert code == 0
    assert "--verify" in out
    assert "--config" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("embserve ")


# ---------------------------------------------------------------------------------------------
# inspect: the listing


def test_inspect_tpu_adagrad_lists_variables_tables_slots_and_totals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "inspect", FIXTURES / "tpu_adagrad")
    assert code == 0, err
    assert err == ""
    assert "ckpt-1" in out.splitlines()[0]
    # Every variable, with dtype, shape and size.
    for line in (
        "embedding/t0/.ATTRIBUTES/VARIABLE_VALUE                float32  [7, 3]    84 B",
        "embedding/t1.Saccumulators/.ATTRIBUTES/VARIABLE_VALUE  float32  [11, 5]  220 B",
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE                int64    []         8 B",
        "_CHECKPOINTABLE_OBJECT_GRAPH                           string   []       709 B",
    ):
        assert line in out
    # The embedding tables with their slots.
    assert "embedding tables (2, in 1 TPUEmbedding object):" in out
    assert "embedding  t0     float32  [7, 3]    84 B  accumulators" in out
    assert "embedding  t1     float32  [11, 5]  220 B  accumulators" in out
    # Totals: 709 + 2 × 84 + 2 × 220 + 8 bytes of values.
    assert "6 tensors, 1.29 KiB (1,325 bytes) of values" in out
    assert "2 embedding tables, 304 B; 2 optimizer slots, 304 B" in out


def test_inspect_prefix_and_directory_agree(capsys: pytest.CaptureFixture[str]) -> None:
    _, by_dir, _ = run(capsys, "inspect", FIXTURES / "tpu_adam")
    code, by_prefix, _ = run(capsys, "inspect", FIXTURES / "tpu_adam" / "ckpt-1")
    assert code == 0
    assert "(the latest in" in by_dir.splitlines()[0]
    assert by_dir.splitlines()[1:] == by_prefix.splitlines()[1:]
    assert "momenta, velocities" in by_prefix


def test_inspect_keras_finds_only_the_embedding(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", FIXTURES / "keras")
    assert code == 0
    assert "optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE" in out
    assert "embedding tables (1, in 1 TPUEmbedding object):" in out
    assert "embedding  t0     float32  [5, 3]  60 B  accumulators" in out


def test_inspect_sharded_checkpoint_shows_slices(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", FIXTURES / "sharded" / "ckpt")
    assert code == 0
    assert "3 data shards" in out
    # Sliced tensors have no size in the index; it is elements × itemsize.
    assert "v2/.ATTRIBUTES/VARIABLE_VALUE  (2 slices)  float32  [20, 3]  240 B" in out
    assert "v3/.ATTRIBUTES/VARIABLE_VALUE  (3 slices)  int64    [40]     320 B" in out
    assert "embedding tables: none found" in out


def test_inspect_tf1_checkpoint_without_object_graph(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", FIXTURES / "partitioned" / "model.ckpt")
    assert code == 0
    assert "emb  (3 slices)  float32  [10, 4]  160 B" in out
    assert "none found (no object graph: a TF1 name-based checkpoint)" in out


def test_inspect_every_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    """Every committed fixture lists all of its variables (names from TF's list_variables)."""
    import json

    for expected_json in sorted(FIXTURES.glob("*/expected.json")):
        records = json.loads(expected_json.read_text())["checkpoints"]
        for prefix, record in records.items():
            code, out, err = run(capsys, "inspect", expected_json.parent / prefix)
            assert code == 0, (prefix, err)
            for name, _shape in record["list_variables"]:
                assert f"  {name}  " in out, (expected_json.parent.name, name)


def test_inspect_a_checkpoint_saved_by_embserve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = es.TableConfig(vocabulary_size=9, dim=3, name="a")
    b = es.TableConfig(vocabulary_size=4, dim=2, name="b")
    emb = es.TPUEmbeddingForServing(
        {"x": es.FeatureConfig(a), "y": es.FeatureConfig(b)}, optimizer=es.Adam(0.1)
    )
    train.Checkpoint(embedding=emb).save(tmp_path / "ckpt")
    code, out, _ = run(capsys, "inspect", tmp_path)
    assert code == 0
    assert "embedding  a      float32  [9, 3]  108 B  momenta, velocities" in out
    assert "2 embedding tables, 140 B; 4 optimizer slots, 280 B" in out


def test_inspect_counts_tensors_that_cannot_be_mapped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A table stored at an unaligned offset is copied into every serving process: inspect says
    which, how big and why (TensorFlow does not align data; a bool before a table is enough)."""
    from embserve.checkpoint import BundleWriter

    with BundleWriter(tmp_path / "ckpt") as w:
        w.add("flag", np.array([True]))
        w.add("table", np.ones((5, 3), np.float32))
        w.add("aligned", np.ones(2, np.int8))
    code, out, err = run(capsys, "inspect", tmp_path / "ckpt")
    assert code == 0, err
    assert (
        "copied: 1 of 3 numeric tensors (60 B) cannot be mapped and are copied into every "
        "process: table (offset 1 is not a multiple of float32's 4-byte alignment)"
    ) in out
    _, aligned, _ = run(capsys, "inspect", FIXTURES / "tpu_adagrad")
    assert "zero-copy: all 5 numeric tensors map straight from the data files" in aligned


# ---------------------------------------------------------------------------------------------
# inspect --verify


def test_verify_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", FIXTURES / "tpu_adagrad", "--verify")
    assert code == 0, err
    assert "verify: OK, every checksum matches" in out
    # stderr is not a terminal under capsys: a few plain progress lines, ending at 100 %.
    lines = err.splitlines()
    assert 1 <= len(lines) <= 5
    assert all(line.startswith("verify: ") for line in lines)
    assert "\r" not in err
    assert lines[-1].startswith("verify: 100%")
    assert "1.29 KiB / 1.29 KiB" in lines[-1]


@pytest.mark.parametrize("fixture", ["sharded/ckpt", "partitioned/model.ckpt", "dtypes", "keras"])
def test_verify_ok_on_other_layouts(capsys: pytest.CaptureFixture[str], fixture: str) -> None:
    code, out, err = run(capsys, "inspect", FIXTURES / fixture, "--verify")
    assert code == 0, err
    assert "verify: OK" in out


def test_verify_reports_a_flipped_table_byte_naming_the_data_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("tpu_adagrad", tmp_path)
    data = ckpt / "ckpt-1.data-00000-of-00001"
    info = BundleReader(ckpt / "ckpt-1").info("embedding/t1/.ATTRIBUTES/VARIABLE_VALUE")
    flip_byte(data, info.offset + 5)

    # Without --verify only metadata and the object graph are read: the listing succeeds.
    code, _, err = run(capsys, "inspect", ckpt)
    assert code == 0, err

    code, out, err = run(capsys, "inspect", ckpt, "--verify")
    assert code == 1
    assert "verify: OK" not in out
    error_lines = [line for line in err.splitlines() if line.startswith("embserve: error:")]
    assert len(error_lines) == 1, err
    assert_one_line_error(
        error_lines[0], str(data), "embedding/t1/.ATTRIBUTES/VARIABLE_VALUE", "checksum"
    )


def test_a_flipped_index_byte_is_reported_naming_the_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("tpu_none", tmp_path)
    index = ckpt / "ckpt-1.index"
    flip_byte(index, 40)  # inside the data block: its checksum no longer matches
    code, out, err = run(capsys, "inspect", ckpt)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, str(index))


def test_a_flipped_object_graph_byte_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("tpu_none", tmp_path)
    data = ckpt / "ckpt-1.data-00000-of-00001"
    info = BundleReader(ckpt / "ckpt-1").info("_CHECKPOINTABLE_OBJECT_GRAPH")
    flip_byte(data, info.offset + info.size - 3)  # string bytes are always checked when read
    code, out, err = run(capsys, "inspect", ckpt)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, str(data))


def test_a_truncated_data_file_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("tpu_adam", tmp_path)
    data = ckpt / "ckpt-1.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-10])
    code, _, err = run(capsys, "inspect", ckpt)
    assert code == 1
    assert_one_line_error(err, "ckpt-1.data-00000-of-00001")


def test_a_missing_data_file_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("sharded", tmp_path)
    (ckpt / "ckpt.data-00001-of-00003").unlink()
    code, _, err = run(capsys, "inspect", ckpt / "ckpt")
    assert code == 1
    assert_one_line_error(err, "ckpt.data-00001-of-00003")


# ---------------------------------------------------------------------------------------------
# inspect: paths that hold no checkpoint


def test_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "inspect", tmp_path / "no" / "such" / "ckpt-1")
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "ckpt-1.index", "does not exist")


def test_empty_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "inspect", tmp_path)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "no checkpoint found")


def test_directory_without_state_file_names_the_prefixes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "inspect", FIXTURES / "sharded")
    assert code == 1
    assert_one_line_error(err, "holds 1 checkpoint(s): ckpt", "pass a prefix")


def test_state_file_naming_a_deleted_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("manager", tmp_path)
    for f in ckpt.glob("ckpt-3.*"):
        f.unlink()
    code, _, err = run(capsys, "inspect", ckpt)
    assert code == 1
    assert_one_line_error(err, "ckpt-2")  # the survivor is offered as a prefix


def test_a_garbage_index_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "x.index").write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "inspect", tmp_path / "x")
    assert code == 1
    assert_one_line_error(err, "x.index")


# ---------------------------------------------------------------------------------------------
# inspect --config: every skeleton is a config the server loads (issue 10, item 16)


def _fixture_prefixes() -> list[Path]:
    """Every checkpoint prefix among the TensorFlow-made fixtures (SparseCore ones included;
    their damaged cases, under ``mismatch/``, are not servable by design)."""
    return sorted(i.with_suffix("") for i in FIXTURES.glob("*/*.index")) + sorted(
        i.with_suffix("") for i in SPARSECORE.glob("*/*.index")
    )


def _embedding_prefixes() -> list[Path]:
    """The fixture prefixes that hold TPU embedding tables."""
    out = []
    for prefix in _fixture_prefixes():
        with BundleReader(prefix) as reader:
            if reader.has_tensor(OBJECT_GRAPH_KEY) and find_embedding_tables(reader):
                out.append(prefix)
    return out


def _skeleton(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[str, ServingConfig]:
    """``inspect PATH --config``'s output and what the server's parser makes of it."""
    code, out, err = run(capsys, "inspect", path, "--config")
    assert code == 0, err
    assert err == ""
    return out, parse_config(out, source="inspect --config")


def _serve_once(config: ServingConfig) -> es.TPUEmbeddingForServing:
    """What the server does with ``config``: find the checkpoint, load and verify it."""
    reloader = Reloader(config.checkpoint, make_loader(config), poll_interval_s=0)
    loaded = reloader.poll()
    assert loaded is not None, reloader.last_error
    return loaded.model


def _assert_serves_the_checkpoint(config: ServingConfig, prefix: Path) -> None:
    """The server restores every table the skeleton names, with the checkpoint's values."""
    model = _serve_once(config)
    with BundleReader(prefix) as reader:
        found = [t for t in find_embedding_tables(reader) if t.object_path == config.object_path]
        assert [t.table for t in found] == [str(t.name) for t in config.tables]
        for t in found:
            stored = reader.get_tensor(t.key)
            if t.layout is not None:  # a SparseCore stack: the table is cut out of it
                stored = unstack_table(stored, t.layout)
            served = model({t.table: np.arange(stored.shape[0])})[t.table]
            np.testing.assert_array_equal(served, stored)


def test_every_fixture_with_tables_is_tested() -> None:
    names = {p.parent.name for p in _embedding_prefixes()}
    assert names == {
        "keras",
        "tpu_adagrad",
        "tpu_adam",
        "tpu_none",
        # SparseCore (TPUEmbeddingV2) checkpoints
        "four_chips_4sc",
        "four_chips_ftrl",
        "keras_beside",
        "keras_nested",
        "mixed",
        "one_chip_adam",
        "resaved",
        "sharded_files",
        "stacked_2x4",
        "unstacked",
    }


@pytest.mark.parametrize("config", [False, True], ids=["listing", "config"])
def test_inspect_refuses_damaged_sparsecore_layouts_naming_the_key(
    capsys: pytest.CaptureFixture[str], config: bool
) -> None:
    """Layouts that cannot be decoded: exit 1, nothing on stdout (as for a damaged object
    graph), one line naming the layouts key."""
    argv = ["inspect", SPARSECORE / "mismatch" / "layouts_garbage"] + (
        ["--config"] if config else []
    )
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert_one_line_error(
        err,
        "embedding/_sparse_core_table_layouts/.ATTRIBUTES/VARIABLE_VALUE",
        "not a serialized SparseCoreTableLayouts proto",
    )


def test_inspect_lists_sparsecore_stacks_and_their_tables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The worked example of SPARSECORE_FORMAT.md §9: two stacks, each table's logical shape
    and size, and where it sits in its stack (padding, row offset, rotation)."""
    code, out, err = run(capsys, "inspect", SPARSECORE / "stacked_2x4")
    assert code == 0, err
    assert "embedding  t_b    float32  [37, 16]   2.31 KiB  accumulators" in out
    assert "SparseCore stacks (2; tables served from them in place):" in out
    first = next(line for line in out.splitlines() if line.lstrip().startswith("t_a_t_b_t_c "))
    assert (
        " ".join(first.split()) == "t_a_t_b_t_c [256, 16] 2 x 4 t_a 100 x 16 +28 rows, +0 cols 0 0"
    )
    assert "t_b    37 x 16     +27 rows, +0 cols      16         4" in out
    assert "t_c    50 x 12     +14 rows, +4 cols      24         0" in out
    # Tables are counted by their own bytes (100*16 + 37*16 + 50*12 + 64*8 floats), slot
    # stacks once.
    assert "4 embedding tables, 12.9 KiB; 1 optimizer slot, 16.0 KiB" in out


@pytest.mark.parametrize("prefix", _embedding_prefixes(), ids=lambda p: p.parent.name)
@pytest.mark.parametrize("as_directory", [False, True], ids=["prefix", "directory"])
def test_config_of_every_fixture_loads_and_serves(
    capsys: pytest.CaptureFixture[str], prefix: Path, as_directory: bool
) -> None:
    path = prefix.parent if as_directory else prefix
    _, config = _skeleton(capsys, path)
    assert config.checkpoint == os.path.abspath(path)
    _assert_serves_the_checkpoint(config, prefix)


@pytest.mark.parametrize(
    ("fixture", "object_path", "written"),
    [
        ("tpu_adagrad", ("model", "layer_with_weights-0"), 'object = "model/layer_with_weights-0"'),
        ("tpu_adam", ("model", "embedding"), 'object = "model/embedding"'),
        ("keras", ("outer", "dense/emb", "x.y"), 'object = ["outer", "dense/emb", "x.y"]'),
    ],
)
def test_config_of_a_nested_embedding_loads_and_serves(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fixture: str,
    object_path: tuple[str, ...],
    written: str,
) -> None:
    """tf.train.Checkpoint(model=keras_model) puts the embedding below the root: the server
    restores it from the path the skeleton names (it used to refuse "model/embedding")."""
    prefix = Path(nest_embedding(FIXTURES / fixture / "ckpt-1", tmp_path / "ckpt-1", object_path))
    out, config = _skeleton(capsys, prefix)
    assert written in [line.partition("  #")[0].rstrip() for line in out.splitlines()]
    assert config.object_path == object_path
    assert config.name == object_path[-1]
    _assert_serves_the_checkpoint(config, prefix)


def test_config_describes_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "tpu_adagrad"
    out, config = _skeleton(capsys, path)
    assert (config.name, config.checkpoint, config.object_path) == (
        "embedding",
        os.path.abspath(path),
        ("embedding",),
    )
    tables = {str(t.name): (t.vocabulary_size, t.dim, t.combiner) for t in config.tables}
    assert tables == {name: (*shape, "mean") for name, shape in TPU_TABLES.items()}
    assert [(p, str(f.table.name), f.max_sequence_length) for p, f in config.features.items()] == [
        ("t0", "t0", 0),
        ("t1", "t1", 0),
    ]
    # Comments explain the keys, and mark what checkpoints do not store.
    assert "# embserve serving config, a skeleton made by `embserve inspect --config`." in out
    combiner = next(line for line in out.splitlines() if line.startswith("combiner = "))
    assert "sum | mean | sqrtn" in combiner
    assert combiner.endswith("(set it)")
    assert "# The checkpoint also holds its optimizer slots (accumulators); not served." in out
    assert any(line.startswith("# output_shape = [") for line in out.splitlines())
    assert any(line.startswith("# poll_interval_s = 1.0 ") for line in out.splitlines())
    assert "[limits]" in out
    assert "# max_batch = 4096 " in out


def test_config_with_verify_keeps_stdout_pure_toml(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "keras" / "ckpt-1"
    code, out, err = run(capsys, "inspect", path, "--config", "--verify")
    assert code == 0, err
    config = parse_config(out)
    assert config.checkpoint == os.path.abspath(path)
    assert [(t.name, t.vocabulary_size, t.dim) for t in config.tables] == [("t0", 5, 3)]
    assert "verify: OK" in err


def test_config_with_verify_prints_no_config_for_a_corrupt_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("tpu_adam", tmp_path)
    data = ckpt / "ckpt-1.data-00000-of-00001"
    info = BundleReader(ckpt / "ckpt-1").info("embedding/t0.Svelocities/.ATTRIBUTES/VARIABLE_VALUE")
    flip_byte(data, info.offset)
    code, out, err = run(capsys, "inspect", ckpt, "--config", "--verify")
    assert code == 1
    assert out == ""  # `--config --verify > serving.toml` leaves no config behind
    assert "t0.Svelocities" in err.splitlines()[-1]


def test_config_without_tables_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", FIXTURES / "dtypes", "--config")
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "no TPU embedding tables found")


def test_config_configures_the_first_of_several_embedding_objects(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = es.TPUEmbeddingForServing(
        es.FeatureConfig(es.TableConfig(vocabulary_size=6, dim=2, name="u")), optimizer=None
    )
    second = es.TPUEmbeddingForServing(
        es.FeatureConfig(es.TableConfig(vocabulary_size=3, dim=5, name="v")), optimizer=None
    )
    train.Checkpoint(left=first, right=second).write(tmp_path / "two")
    out, config = _skeleton(capsys, tmp_path / "two")
    assert (config.name, config.object_path) == ("left", ("left",))
    assert [t.name for t in config.tables] == ["u"]
    assert 'other embedding objects too, not configured: "right"' in out
    _serve_once(config)


@pytest.mark.parametrize(
    ("edge", "name"),
    [
        ('q"uote\\back\tslash\x01\x7f é /x', "q_uote_back_slash_x"),
        ("layer_with_weights-0", "layer_with_weights-0"),
        ("..hidden", "hidden"),
        ("-", "model"),
        ("é", "model"),
    ],
)
def test_config_of_odd_names_parses_back(edge: str, name: str) -> None:
    """Table names and object edges are free text: the skeleton must still be a config the
    server accepts, naming the same objects, with a model name fit for URLs."""
    from embserve.checkpointing import FoundTable

    table = "t" + edge.replace("/", "")  # a table edge never holds '/' (slots use it)
    found = [FoundTable(("emb", edge), table, "k", (4, 2), "float32", {})]
    config = parse_config(serving_config_toml(found, "/tmp/" + edge))
    assert config.name == name
    assert config.checkpoint == os.path.abspath("/tmp/" + edge)
    assert config.object_path == ("emb", edge)
    assert [t.name for t in config.tables] == [table]
    assert list(config.features) == [table]


def test_config_skips_what_is_not_a_servable_table() -> None:
    from embserve.checkpointing import FoundTable

    found = [
        FoundTable(("emb",), "t", "k1", (4, 2), "float32", {}),
        FoundTable(("emb",), "kernel", "k2", (2,), "float32", {}),
        FoundTable(("emb",), "empty", "k3", (0, 2), "float32", {}),
        FoundTable(("emb",), "half", "k4", (4, 2), "bfloat16", {}),
    ]
    text = serving_config_toml(found, "/ckpt")
    assert [t.name for t in parse_config(text).tables] == ["t"]
    assert '# Not configured, not a 2-D table: "kernel" [2]' in text
    assert '# Not configured, an empty table: "empty" [0, 2]' in text
    assert '# Not configured, stored as bfloat16 (served tables are float32): "half"' in text
    with pytest.raises(es.ConfigError, match="no table of embedding object 'emb' can be served"):
        serving_config_toml(found[1:], "/ckpt")


# ---------------------------------------------------------------------------------------------
# Pieces


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_redraws_one_line() -> None:
    now = [0.0]
    stream = FakeTerminal()
    bar = ProgressBar("verify", stream, clock=lambda: now[0], min_interval=0.1)
    total = 4 << 30
    for i in range(101):
        now[0] = i * 0.02  # 50 calls per second: redrawn at most every 0.1 s
        bar(total * i // 100, total)
    bar.close()
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert 15 <= len(frames) <= 30  # throttled, but the last state is always drawn
    assert text.endswith("\n")
    last = frames[-1]
    assert "100%" in last
    assert "4.00 GiB / 4.00 GiB" in last
    assert "/s" in last
    assert "[" + "#" * 10 in last  # a full bar


def test_progress_bar_elsewhere_prints_a_few_lines() -> None:
    stream = io.StringIO()
    bar = ProgressBar("verify", stream, clock=lambda: 1.0)
    for i in range(1001):
        bar(i, 1000)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["25%", "50%", "75%", "100%"]


def test_progress_bar_for_an_empty_checkpoint() -> None:
    stream = io.StringIO()
    ProgressBar("verify", stream)(0, 0)
    assert "100%" in stream.getvalue()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1325, "1.29 KiB"),
        (10 * 1024 * 1024, "10.0 MiB"),
        (4_096_000_000, "3.81 GiB"),
        (250 << 30, "250 GiB"),
        (3 << 50, "3.00 PiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert "result:" in out


# ---------------------------------------------------------------------------------------------
# quantize and inspect --accuracy


def demo_checkpoint(tmp_path: Path) -> Path:
    """The bundled demo model saved as a float32 checkpoint directory (3 tables, Adagrad)."""
    from embserve.demo import write_demo_files

    files = write_demo_files(tmp_path / "demo")
    return Path(files.checkpoint).parent


def accuracy_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(table, storage) → the cells of the accuracy table's lines on stdout."""
    lines = out.split("accuracy against float32:\n", 1)[1].splitlines()
    assert lines[0].split()[:2] == ["table", "storage"]
    rows = {}
    for line in lines[1:]:
        cells = line.split()
        if cells[0] == "pooled:":
            break
        rows[(cells[0], cells[1])] = cells
    return rows


def test_quantize_writes_a_checkpoint_and_prints_its_accuracy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from embserve.accuracy import table_accuracy
    from embserve.storage import QuantizedTable

    source = demo_checkpoint(tmp_path)
    code, out, err = run(capsys, "quantize", source, "--to", tmp_path / "q", "--dtype", "int8")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'q' / 'ckpt-1'} in ")
    assert "  items       int8     [5000, 8]   156 KiB  78.1 KiB" in out
    assert "quantized tables: 173 KiB -> 90.4 KiB (1.91x smaller)" in out
    rows = accuracy_rows(out)
    assert set(rows) == {("users", "int8"), ("items", "int8"), ("categories", "int8")}
    # The figures are those of the written rows against the float32 ones.
    src, dst = BundleReader(source), BundleReader(tmp_path / "q")
    key = "embedding/items/.ATTRIBUTES/VARIABLE_VALUE"
    found = {t.table: t for t in find_embedding_tables(dst)}
    stored = QuantizedTable(dst.get_tensor(found["items"].key), "int8", 8)
    want = table_accuracy(src.get_tensor(key), stored, name="items")
    assert rows[("items", "int8")][6] == f"{want.max_abs_error:.2e}"
    assert rows[("items", "int8")][8] == f"{want.mean_abs_error:.2e}"
    assert want.within_bound
    assert "pooled: 1,000 bags of 1-40 uniform ids (seed 0), sum combiner" in out
    # Progress on stderr (not a terminal: milestone lines), nothing else.
    assert "quantize: 100%" in err
    assert "accuracy: 100%" in err
    assert "error" not in err
    # What was written is what the manifest records.
    from embserve.checkpointing import read_storage_manifest

    manifest = read_storage_manifest(dst)
    assert manifest is not None
    assert {e["table"]: e["storage"] for e in manifest["tables"]} == dict.fromkeys(
        ("users", "items", "categories"), "int8"
    )


def test_quantize_some_tables(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = demo_checkpoint(tmp_path)
    code, out, err = run(
        capsys, "quantize", source, "--to", tmp_path / "q", "--dtype", "int4", "--tables", "items"
    )
    assert code == 0, err
    assert "  users       float32" in out
    assert set(accuracy_rows(out)) == {("items", "int4")}


def test_quantize_refuses_to_overwrite_without_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = demo_checkpoint(tmp_path)
    argv = ["quantize", source, "--to", tmp_path / "q", "--dtype", "float16"]
    assert run(capsys, *argv)[0] == 0
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert_one_line_error(err.splitlines()[-1] + "\n", "already exists")
    code, out, err = run(capsys, *argv, "--overwrite")
    assert code == 0, err


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--tables", "nope"], ["nope"]),
        (["--to", "SOURCE"], ["source checkpoint itself"]),
    ],
)
def test_quantize_bad_input_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], fragments: list[str]
) -> None:
    source = demo_checkpoint(tmp_path)
    extra = [str(source / "ckpt-1") if e == "SOURCE" else e for e in extra]
    to = [] if "--to" in extra else ["--to", str(tmp_path / "q")]
    code, out, err = run(capsys, "quantize", source, *to, "--dtype", "int8", *extra)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, *fragments)


def test_quantize_a_missing_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "quantize", tmp_path / "none", "--to", tmp_path, "--dtype", "int4")
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "none")


def test_quantize_names_a_nan_row(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = es.TableConfig(vocabulary_size=9, dim=3, name="a")
    emb = es.TPUEmbeddingForServing({"x": es.FeatureConfig(a)}, optimizer=None)
    emb.embedding_tables[a][...] = 1.0
    emb.embedding_tables[a][7, 1] = np.nan
    train.Checkpoint(embedding=emb).save(tmp_path / "src" / "ckpt")
    code, out, err = run(
        capsys, "quantize", tmp_path / "src", "--to", tmp_path / "q", "--dtype", "int8"
    )
    assert code == 1
    assert out == ""
    assert_one_line_error(err.splitlines()[-1] + "\n", "table 'a'", "row 7", "NaN")
    assert not (tmp_path / "q" / "ckpt-1.index").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quantize", "x", "--dtype", "int8"], "required: --to"),
        (["quantize", "x", "--to", "y"], "required: --dtype"),
        (["quantize", "x", "--to", "y", "--dtype", "int2"], "invalid choice"),
        (["quantize", "x", "--to", "y", "--dtype", "int8", "--tables", ","], "table names"),
        (["inspect", "x", "--accuracy", "int9"], "storage types are a comma-separated list"),
        (["inspect", "x", "--accuracy"], "--accuracy needs storage types"),
        (["inspect", "x", "--against", "y"], "--against needs --accuracy"),
        (["inspect", "x", "--accuracy", "int8", "--against", "y"], "give one or the other"),
        (["inspect", "x", "--accuracy", "int8", "--config"], "cannot be combined"),
        (["inspect", "x", "--accuracy", "int8", "--verify"], "cannot be combined"),
    ],
)
def test_quantize_and_accuracy_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_inspect_accuracy_of_types_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt = copy_fixture("tpu_adagrad", tmp_path)
    before = sorted(p.name for p in ckpt.iterdir())
    code, out, err = run(capsys, "inspect", ckpt, "--accuracy", "int8, int4,bfloat16")
    assert code == 0, err
    assert sorted(p.name for p in ckpt.iterdir()) == before
    rows = accuracy_rows(out)
    assert set(rows) == {(t, s) for t in TPU_TABLES for s in ("int8", "int4", "bfloat16")}
    assert rows[("t1", "int4")][2:4] == ["7", "of"]  # ceil(5 / 2) + 4 bytes of 20
    assert "accuracy: 100%" in err


def test_inspect_accuracy_of_a_sparsecore_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    prefixes = [p for p in _embedding_prefixes() if SPARSECORE in p.parents]
    assert prefixes
    code, out, err = run(capsys, "inspect", prefixes[0], "--accuracy", "int8")
    assert code == 0, err
    assert accuracy_rows(out)


def test_inspect_accuracy_against_the_float32_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = demo_checkpoint(tmp_path)
    _, quantized_out, _ = run(capsys, "quantize", source, "--to", tmp_path / "q", "--dtype", "int4")
    code, out, err = run(capsys, "inspect", tmp_path / "q", "--accuracy", "--against", source)
    assert code == 0, err
    assert accuracy_rows(out) == accuracy_rows(quantized_out)
    # What int4 would cost, measured on the float32 checkpoint, is what was written.
    _, types_out, _ = run(capsys, "inspect", source, "--accuracy", "int4")
    assert accuracy_rows(types_out) == accuracy_rows(out)


def test_inspect_accuracy_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = demo_checkpoint(tmp_path)
    run(capsys, "quantize", source, "--to", tmp_path / "q", "--dtype", "int8")
    cases = [
        (["inspect", tmp_path / "q", "--accuracy", "int4"], "quantized already"),
        (["inspect", source, "--accuracy", "--against", source], "holds no quantized tables"),
        (
            ["inspect", tmp_path / "q", "--accuracy", "--against", FIXTURES / "tpu_adagrad"],
            "is not in checkpoint",
        ),
        (["inspect", FIXTURES / "dtypes", "--accuracy", "int8"], "no TPU embedding tables"),
    ]
    for argv, fragment in cases:
        code, out, err = run(capsys, *argv)
        assert code == 1, argv
        assert out == ""
        assert_one_line_error(err, fragment)
