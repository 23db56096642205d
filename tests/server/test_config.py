"""The serving config: what a good file builds, and how a bad one is reported (key and line)."""

from __future__ import annotations

import os
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest

import embserve as es
from embserve.server.config import (
    DEFAULT_MODEL_NAME,
    Limits,
    ServerOptions,
    ServingConfigError,
    flatten_features,
    load_config,
    parse_config,
)

GOOD = """\
[model]
name = "rec"
checkpoint = "ckpts"
object = "emb"
poll_interval_s = 0.5

[[tables]]
name = "users"
vocabulary_size = 100
dim = 4
combiner = "sum"

[[tables]]
name = "items"
vocabulary_size = 50
dim = 3

[[features]]
path = "user"
table = "users"

[[features]]
path = "recent"
table = "items"
max_sequence_length = 5
validate_weights_and_indices = false

[[features]]
path = "shaped"
table = "items"
output_shape = [2, 2]

[limits]
max_batch = 10

[server]
inline_max_body_bytes = 0
"""


def test_good_config(tmp_path: Path) -> None:
    path = tmp_path / "serving.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.name == "rec"
    assert config.checkpoint == str(tmp_path / "ckpts")  # relative to the file's directory
    assert config.object_path == ("emb",)
    assert config.poll_interval_s == 0.5
    assert config.limits == Limits(max_batch=10)
    assert config.server == ServerOptions(inline_max_body_bytes=0)
    assert ServerOptions().inline_max_body_bytes == 256 << 10
    assert Limits().max_body_bytes == 8 << 20
    assert list(config.features) == ["user", "recent", "shaped"]
    user, recent, shaped = config.features.values()
    assert config.feature_config is config.features  # TOML form: the flat dict is the config
    assert (user.table.name, user.table.vocabulary_size, user.table.dim) == ("users", 100, 4)
    assert user.table.combiner == "sum"
    assert recent.table.combiner == "mean"
    assert recent.table is shaped.table  # one TableConfig object per [[tables]]
    assert recent.max_sequence_length == 5
    assert recent.validate_weights_and_indices is False
    assert shaped.output_shape == (2, 2)
    assert [t.name for t in config.tables] == ["users", "items"]
    model = config.new_model()
    assert isinstance(model, es.TPUEmbeddingForServing)
    assert model is not config.new_model()


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ('"embedding"', ("embedding",)),
        ('"model/embedding"', ("model", "embedding")),
        ('"model/layer_with_weights-0"', ("model", "layer_with_weights-0")),
        ('["model", "dense/emb"]', ("model", "dense/emb")),
        ("['a.b', \"c\"]", ("a.b", "c")),
        ('["embedding"]', ("embedding",)),
    ],
)
def test_object_is_a_path_of_edge_names(value: str, path: tuple[str, ...]) -> None:
    """A Keras model holding the TPUEmbedding puts it below the root
    (tf.train.Checkpoint(model=m) → model/layer_with_weights-0): the object key names that
    path, joined by '/', or as an array when an edge name holds a '/'."""
    config = parse_config(GOOD.replace('object = "emb"', f"object = {value}"), checkpoint="c")
    assert config.object_path == path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    text = GOOD.replace('object = "emb"\n', "").replace("poll_interval_s = 0.5\n", "")
    text = text.split("[limits]")[0]
    config = parse_config(text, checkpoint="elsewhere", name="other")
    assert config.server == ServerOptions()
    assert config.object_path == ("embedding",)
    assert config.poll_interval_s == 1.0
    assert config.limits == Limits()
    assert config.name == "other"
    assert config.checkpoint == os.path.abspath("elsewhere")


def _line_of(text: str, fragment: str, *, last: bool = True) -> int:
    """1-based line of the last (or first) line holding ``fragment``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if fragment in line]
    return lines[-1] if last else lines[0]


@pytest.mark.parametrize(
    ("old", "new", "key", "line_fragment", "problem"),
    [
        ("dim = 4", "dims = 4", "tables[0] ('users').dims", "dims = 4", "did you mean 'dim'"),
        ("dim = 3", "dim = 0", "tables[1] ('items').dim", "dim = 0", "integer >= 1, got 0"),
        ("dim = 3", 'dim = "3"', "tables[1] ('items').dim", 'dim = "3"', "integer >= 1"),
        ("dim = 3", "dim = true", "tables[1] ('items').dim", "dim = true", "integer >= 1"),
        (
            'combiner = "sum"',
            'combiner = "max"',
            "tables[0] ('users').combiner",
            'combiner = "max"',
            "'sum', 'mean', 'sqrtn'",
        ),
        (
            'name = "items"',
            'name = "users"',
            "tables[1] ('users').name",
            'name = "users"',
            "duplicate",
        ),
        ("vocabulary_size = 50\n", "", "tables[1] ('items')", "[[tables]]", "'vocabulary_size'"),
        (
            'table = "users"',
            'table = "user"',
            "features[0] ('user').table",
            'table = "user"',
            "did you mean 'users'",
        ),
        (
            "max_sequence_length = 5",
            "max_sequence_length = -1",
            "features[1] ('recent').max_sequence_length",
            "max_sequence_length = -1",
            "integer >= 0",
        ),
        (
            "output_shape = [2, 2]",
            "output_shape = [2, 0]",
            "features[2] ('shaped').output_shape",
            "output_shape = [2, 0]",
            "integers >= 1",
        ),
        (
            "validate_weights_and_indices = false",
            'validate_weights_and_indices = "no"',
            "features[1] ('recent').validate_weights_and_indices",
            "validate_weights_and_indices",
            "true or false",
        ),
        (
            'path = "shaped"',
            'path = "user"',
            "features[2] ('user').path",
            'path = "user"',
            "duplicate",
        ),
        ("max_batch = 10", "max_batch = 0", "limits.max_batch", "max_batch = 0", "integer >= 1"),
        (
            "max_batch = 10",
            "max_bach = 10",
            "limits.max_bach",
            "max_bach",
            "did you mean 'max_batch'",
        ),
        (
            "inline_max_body_bytes = 0",
            "inline_max_body_bytes = -1",
            "server.inline_max_body_bytes",
            "inline_max_body_bytes",
            "integer >= 0",
        ),
        ('name = "rec"', 'name = "a/b"', "model.name", 'name = "a/b"', "letters, digits"),
        (
            "poll_interval_s = 0.5",
            "poll_interval_s = 0",
            "model.poll_interval_s",
            "poll_interval_s",
            "> 0",
        ),
        ('object = "emb"', 'object = "a//b"', "model.object", 'object = "a//b"', "empty edge"),
        ('object = "emb"', 'object = "/a"', "model.object", 'object = "/a"', "empty edge"),
        ('object = "emb"', 'object = ""', "model.object", 'object = ""', "empty edge"),
        ('object = "emb"', "object = []", "model.object", "object = []", "edge names"),
        ('object = "emb"', 'object = ["a", 1]', "model.object", "object = [", "edge names"),
        ('object = "emb"', 'object = ["a", ""]', "model.object", "object = [", "empty edge"),
        ('object = "emb"', "object = 3", "model.object", "object = 3", "edge names"),
        ('checkpoint = "ckpts"\n', "", "model", "[model]", "'checkpoint'"),
        ("[limits]", "[limit]", "limit", "[limit]", "did you mean 'limits'"),
    ],
)
def test_bad_config_names_key_and_line(
    tmp_path: Path, old: str, new: str, key: str, line_fragment: str, problem: str
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = tmp_path / "serving.toml"
    path.write_text(text)
    with pytest.raises(ServingConfigError) as info:
        load_config(path)
    err = info.value
    assert err.key == key
    assert err.line == _line_of(text, line_fragment)
    assert problem in err.problem
    assert str(path) in str(err)
    assert f"line {err.line}" in str(err)
    assert isinstance(err, es.ConfigError)


def test_unused_table_is_an_error() -> None:
    text = GOOD + '\n[[tables]]\nname = "spare"\nvocabulary_size = 2\ndim = 2\n'
    with pytest.raises(ServingConfigError, match="used by no feature") as info:
        parse_config(text)
    assert info.value.key == "tables[2] ('spare').name"
    assert info.value.line == _line_of(text, 'name = "spare"')


def test_toml_syntax_error_has_its_line() -> None:
    text = GOOD.replace("dim = 4", "dim = = 4")
    with pytest.raises(ServingConfigError, match=r"invalid TOML: .*line 10"):
        parse_config(text, source="x.toml")


def test_missing_sections() -> None:
    with pytest.raises(ServingConfigError, match=r"\[model\]"):
        parse_config("[[tables]]\nname='a'\n")
    with pytest.raises(ServingConfigError, match=r"\[\[tables\]\]"):
        parse_config('[model]\nname = "m"\ncheckpoint = "c"\n')
    text = GOOD.split("[[features]]")[0]
    with pytest.raises(ServingConfigError, match=r"\[\[features\]\]"):
        parse_config(text)


def test_missing_file() -> None:
    with pytest.raises(ServingConfigError, match="no such file"):
        load_config("/nonexistent/serving.toml")


# ---------------------------------------------------------------------------------------------
# Python form

MODULE = """
import embserve as es

users = es.TableConfig(100, 4, combiner="sum", name="users")
items = es.TableConfig(50, 3)

FEATURES = {
    "user": {"id": es.FeatureConfig(users)},
    "items": [es.FeatureConfig(items), es.FeatureConfig(items, max_sequence_length=2)],
}

def make():
    t = es.TableConfig(10, 2, name="t")
    return {"b": es.FeatureConfig(t), "a": es.FeatureConfig(t)}

BARE = es.FeatureConfig(users)
NOT_CONFIG = {"x": 3}
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"serving_features_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_python_form_in_toml(tmp_path: Path, module: str) -> None:
    path = tmp_path / "serving.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [model]
            name = "rec"
            checkpoint = "ckpts"
            feature_config = "{module}:FEATURES"
            """
        )
    )
    config = load_config(path)
    assert list(config.features) == ["items/0", "items/1", "user/id"]
    assert config.features["items/1"].max_sequence_length == 2
    # Unnamed tables got TensorFlow's generated names, on the shared configs.
    assert [t.name for t in config.tables] == ["table_0", "users"]
    assert config.checkpoint == str(tmp_path / "ckpts")


def test_python_form_on_the_command_line(tmp_path: Path, module: str) -> None:
    config = load_config(f"{module}:make", checkpoint=tmp_path / "c")
    assert list(config.features) == ["a", "b"]
    assert config.name == DEFAULT_MODEL_NAME
    assert config.checkpoint == str(tmp_path / "c")
    assert load_config(f"{module}:make", checkpoint="c", name="m").name == "m"
    with pytest.raises(ServingConfigError, match="--checkpoint"):
        load_config(f"{module}:make")


@pytest.mark.parametrize(
    ("attr", "problem"),
    [
        ("BARE", "single FeatureConfig"),
        ("NOT_CONFIG", "leaf at path 'x' is a int"),
        ("MISSING", "has no attribute 'MISSING'"),
    ],
)
def test_python_form_errors(tmp_path: Path, module: str, attr: str, problem: str) -> None:
    with pytest.raises(ServingConfigError, match=problem) as info:
        load_config(f"{module}:{attr}", checkpoint=tmp_path)
    assert info.value.key == "model.feature_config"


def test_python_form_bad_module(tmp_path: Path) -> None:
    with pytest.raises(ServingConfigError, match="cannot import module"):
        load_config("no_such_module_here:X", checkpoint=tmp_path)


def test_python_form_excludes_tables(module: str) -> None:
    text = GOOD.replace('object = "emb"', f'feature_config = "{module}:FEATURES"')
    with pytest.raises(ServingConfigError, match="not both") as info:
        parse_config(text)
    assert info.value.line == _line_of(text, "[[tables]]", last=False)


def test_flatten_features_refuses_what_requests_could_not_address() -> None:
    """The served names are embserve.lookup.flatten_feature_config's paths; the server also
    refuses two leaves with one path (a request could reach only one of them), keys that
    cannot be sorted, an empty structure and a bare FeatureConfig, naming the problem."""
    t = es.TableConfig(10, 2, name="t")
    point = namedtuple("point", ["y", "x"])
    structure = {"b": [es.FeatureConfig(t), point(es.FeatureConfig(t), es.FeatureConfig(t))]}
    assert list(flatten_features(structure)) == ["b/0", "b/1/y", "b/1/x"]
    for bad, problem in [
        ({"a/b": es.FeatureConfig(t), "a": {"b": es.FeatureConfig(t)}}, "two features at path"),
        ({1: es.FeatureConfig(t), "a": es.FeatureConfig(t)}, "sort"),
        ({"a": [es.FeatureConfig(t), "x"]}, "leaf at path 'a/1' is a str"),
        ({}, "holds no FeatureConfig"),
        (es.FeatureConfig(t), "single FeatureConfig"),
    ]:
        with pytest.raises(ServingConfigError, match=problem) as info:
            flatten_features(bad)
        assert info.value.key == "feature_config"


def test_huge_pages_option(tmp_path: Path) -> None:
    path = tmp_path / "serving.toml"
    path.write_text(GOOD.replace("inline_max_body_bytes = 0", "huge_pages = true"))
    assert load_config(path).server == ServerOptions(huge_pages=True)
    path.write_text(GOOD.replace("inline_max_body_bytes = 0", 'huge_pages = "yes"'))
    with pytest.raises(ServingConfigError, match="huge_pages"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# Limits and server options added for hardening (issue 10)


def _with(limits: str = "", server: str = "") -> str:
    """GOOD with its [limits] and [server] sections replaced."""
    head = GOOD.split("[limits]")[0]
    return head + "[limits]\n" + limits + "\n[server]\n" + server


def test_hardening_defaults() -> None:
    config = parse_config(_with(), checkpoint="x")
    assert config.limits.max_output_floats == config.limits.max_body_bytes == 8 << 20
    server = config.server
    assert server.inline_max_output_floats == 1 << 15
    assert server.max_concurrent_lookups == 0
    assert server.header_timeout_s == 10.0
    assert server.body_timeout_s == 20.0
    assert server.drain_timeout_s == 25.0
    assert server.max_connections == 1000
    assert server.verify_tables is True
    assert server.copy_tables is False
    assert ServerOptions() == server
    assert Limits() == config.limits


def test_hardening_keys(tmp_path: Path) -> None:
    limits = "max_body_bytes = 1000\nmax_output_floats = 5000\n"
    server = textwrap.dedent(
        """\
        inline_max_output_floats = 0
        max_concurrent_lookups = 3
        header_timeout_s = 1.5
        body_timeout_s = 2
        drain_timeout_s = 7.5
        max_connections = 12
        verify_tables = false
        copy_tables = true
        """
    )
    config = parse_config(_with(limits, server), checkpoint="x")
    assert config.limits == Limits(max_body_bytes=1000, max_output_floats=5000)
    assert config.server == ServerOptions(
        inline_max_output_floats=0,
        max_concurrent_lookups=3,
        header_timeout_s=1.5,
        body_timeout_s=2.0,
        drain_timeout_s=7.5,
        max_connections=12,
        verify_tables=False,
        copy_tables=True,
    )
    assert isinstance(config.server.body_timeout_s, float)


def test_derived_defaults_follow_the_keys_they_derive_from() -> None:
    # max_output_floats: one float per byte of max_body_bytes, unless given.
    config = parse_config(_with("max_body_bytes = 4096\n"), checkpoint="x")
    assert config.limits.max_output_floats == 4096
    assert Limits(max_body_bytes=4096).max_output_floats == 4096
    # drain_timeout_s: 5 s beyond body_timeout_s, the slowest a request may take to arrive.
    config = parse_config(_with(server="body_timeout_s = 60\n"), checkpoint="x")
    assert config.server.drain_timeout_s == 65.0
    assert ServerOptions(body_timeout_s=60.0).drain_timeout_s == 65.0


@pytest.mark.parametrize(
    ("section", "line", "key", "problem"),
    [
        ("limits", "max_output_floats = 0", "limits.max_output_floats", "integer >= 1"),
        ("limits", "max_output_floats = 1.5", "limits.max_output_floats", "integer >= 1"),
        ("server", "inline_max_output_floats = -1", "server.inline_max_output_floats", ">= 0"),
        ("server", "max_concurrent_lookups = -2", "server.max_concurrent_lookups", ">= 0"),
        ("server", "max_connections = 0", "server.max_connections", "integer >= 1"),
        ("server", "header_timeout_s = 0", "server.header_timeout_s", "number > 0"),
        ("server", "body_timeout_s = -1", "server.body_timeout_s", "number > 0"),
        ("server", "body_timeout_s = nan", "server.body_timeout_s", "number > 0"),
        ("server", "drain_timeout_s = inf", "server.drain_timeout_s", "number > 0"),
        ("server", 'drain_timeout_s = "5"', "server.drain_timeout_s", "number > 0"),
        ("server", "header_timeout_s = true", "server.header_timeout_s", "number > 0"),
        ("server", 'verify_tables = "yes"', "server.verify_tables", "true or false"),
        ("server", "copy_tables = 1", "server.copy_tables", "true or false"),
        ("server", "max_conections = 5", "server.max_conections", "did you mean"),
    ],
)
def test_bad_hardening_keys(section: str, line: str, key: str, problem: str) -> None:
    text = _with(**{section: line + "\n"})
    with pytest.raises(ServingConfigError) as info:
        parse_config(text, source="s.toml")
    err = info.value
    assert err.key == key
    assert problem in err.problem
    assert err.line == text.splitlines().index(line) + 1
