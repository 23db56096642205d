"""Writing serving configs (``to_toml``): one schema with the parser, so what is written reads
back as the same config, every key with its comment (issue 10, item 16)."""

from __future__ import annotations

import os
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embserve as es
from embserve.lookup import FeatureSpec
from embserve.server.config import (
    Limits,
    ServerOptions,
    ServingConfig,
    ServingConfigError,
    load_config,
    parse_config,
    to_toml,
)
from tests.server import test_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "src" / "embserve" / "demo" / "serving.toml"

# test_config's config, with a nested object and more [limits] and [server] keys.
GOOD = (
    test_config.GOOD.replace('object = "emb"', 'object = ["model", "dense/emb"]')
    .replace("max_batch = 10\n", "max_batch = 10\nmax_body_bytes = 1000\n")
    .replace("inline_max_body_bytes = 0\n", "inline_max_body_bytes = 0\nbody_timeout_s = 3\n")
    + "verify_tables = false\n"
)
assert all(f"\n{key} = " in GOOD for key in ("object", "max_body_bytes", "body_timeout_s"))
assert "dense/emb" in GOOD


def described(config: ServingConfig) -> dict[str, Any]:
    """Everything a config means, comparable with ``==`` (configs hold TableConfig and
    FeatureConfig objects, which compare by identity)."""
    tables = config.tables
    return {
        "name": config.name,
        "checkpoint": config.checkpoint,
        "object_path": config.object_path,
        "poll_interval_s": config.poll_interval_s,
        "limits": config.limits,
        "server": config.server,
        "feature_config_ref": config.feature_config_ref,
        "tables": [(t.name, t.vocabulary_size, t.dim, t.combiner, t.optimizer) for t in tables],
        "features": [
            (path, FeatureSpec.of(path, cfg), [i for i, t in enumerate(tables) if t is cfg.table])
            for path, cfg in config.features.items()
        ],
    }


def assert_round_trip(config: ServingConfig, base_dir: Path | None = None) -> str:
    text = to_toml(config, base_dir=base_dir)
    again = parse_config(text, base_dir=base_dir)
    assert described(again) == described(config), text
    # Commented defaults change nothing.
    assert described(
        parse_config(to_toml(config, base_dir=base_dir, defaults=True), base_dir=base_dir)
    ) == (described(config))
    return text


def test_round_trip_of_a_config_using_every_kind_of_key(tmp_path: Path) -> None:
    config = parse_config(GOOD, base_dir=tmp_path)
    text = assert_round_trip(config)
    assert_round_trip(config, base_dir=tmp_path)
    assert 'checkpoint = "ckpts"' in to_toml(config, base_dir=tmp_path)
    assert f"checkpoint = {str(tmp_path / 'ckpts')!r}".replace("'", '"') in text
    assert 'object = ["model", "dense/emb"]' in text


def test_round_trip_of_the_bundled_demo_config() -> None:
    config = load_config(DEMO)
    text = assert_round_trip(config, base_dir=DEMO.parent)
    # Only what differs from the defaults is written: the demo's own keys.
    data = tomllib.loads(text)
    assert data["model"] == {
        "name": "demo",
        "checkpoint": "checkpoints",
        "object": "embedding",
        "poll_interval_s": 60.0,
    }
    assert "limits" not in data
    assert "server" not in data
    assert tomllib.loads(DEMO.read_text())["tables"] == data["tables"]


def test_round_trip_of_the_readme_config() -> None:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Serving over HTTP")[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match
    assert_round_trip(parse_config(match.group(1), base_dir="/srv"), base_dir=Path("/srv"))


def test_derived_defaults_are_left_out_and_given_ones_kept() -> None:
    text = GOOD.split("[limits]")[0]
    config = parse_config(text + "[limits]\nmax_body_bytes = 1000\n[server]\nbody_timeout_s = 3\n")
    written = tomllib.loads(to_toml(config))
    # max_output_floats follows max_body_bytes, drain_timeout_s follows body_timeout_s.
    assert written["limits"] == {"max_body_bytes": 1000}
    assert written["server"] == {"body_timeout_s": 3.0}
    config = parse_config(
        text + "[limits]\nmax_output_floats = 8388608\nmax_body_bytes = 1000\n"
        "[server]\ndrain_timeout_s = 25.0\nbody_timeout_s = 3\n"
    )
    written = tomllib.loads(to_toml(config))
    assert written["limits"] == {"max_body_bytes": 1000, "max_output_floats": 8388608}
    assert written["server"] == {"body_timeout_s": 3.0, "drain_timeout_s": 25.0}
    assert_round_trip(config)


def test_every_key_is_written_with_its_comment() -> None:
    """defaults=True lists every key the parser knows, each with a comment; the parser accepts
    exactly these keys (an unknown one is refused)."""
    config = parse_config(GOOD, checkpoint="/c")
    text = to_toml(config, defaults=True)
    keys = re.findall(r"^(?:# )?([a-z_]+) = .*?  # \S", text, re.M)
    keys += re.findall(r"^# ([a-z_]+): \S", text, re.M)  # comments above long lines
    expected = {
        "name", "checkpoint", "object", "poll_interval_s", "feature_config",
        "vocabulary_size", "dim", "combiner", "path", "table", "max_sequence_length",
        "output_shape", "validate_weights_and_indices", "storage",
        *(f.name for f in Limits.__dataclass_fields__.values()),
        *(f.name for f in ServerOptions.__dataclass_fields__.values()),
    }  # fmt: skip
    assert set(keys) == expected
    for section in ("model", "limits", "server"):
        for key in ("frobnicate",):
            bad = GOOD.replace(f"[{section}]\n", f"[{section}]\n{key} = 1\n")
            with pytest.raises(ServingConfigError, match="unknown key"):
                parse_config(bad)


MODULE = """
import embserve as es

t = es.TableConfig(10, 2, name="t")
FEATURES = {"a": {"b": es.FeatureConfig(t)}, "c": [es.FeatureConfig(t, max_sequence_length=2)]}
"""


def test_round_trip_of_the_python_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"writer_features_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_config(f"{name}:FEATURES", checkpoint=tmp_path / "c", name="m")
    text = assert_round_trip(config)
    assert f'feature_config = "{name}:FEATURES"' in text
    assert "[[tables]]" not in text.splitlines()


def test_what_toml_cannot_hold_is_refused() -> None:
    config = parse_config(GOOD, checkpoint="/c")
    nested = {"a": dict(config.features)}
    with pytest.raises(ServingConfigError, match="Python structure"):
        to_toml(ServingConfig("m", "/c", nested, config.features))
    table = es.TableConfig(5, 2, name="t", optimizer=es.Adagrad(0.1))
    features = {"f": es.FeatureConfig(table)}
    with pytest.raises(ServingConfigError, match="optimizer"):
        to_toml(ServingConfig("m", "/c", features, features))
    with pytest.raises(ServingConfigError, match="not valid Unicode"):
        to_toml(ServingConfig("m", "/c\udcff", config.features, config.features))
    unknown = {"f": es.FeatureConfig(es.TableConfig(5, 2, name="t"), output_shape=[None, 2])}
    with pytest.raises(ServingConfigError, match="unknown dimensions"):
        to_toml(ServingConfig("m", "/c", unknown, unknown))


def test_a_relative_checkpoint_never_reads_back_as_the_home_directory() -> None:
    config = parse_config(GOOD, checkpoint="/b/~/ckpts")
    text = assert_round_trip(config, base_dir=Path("/b"))
    assert 'checkpoint = "./~/ckpts"' in text


# ---------------------------------------------------------------------------------------------
# Many configs

_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8)
_seconds = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False)


@st.composite
def configs(draw: st.DrawFn) -> ServingConfig:
    table_names = draw(st.lists(_text, min_size=1, max_size=3, unique=True))
    tables = [
        es.TableConfig(
            draw(st.integers(1, 10**6)),
            draw(st.integers(1, 64)),
            combiner=draw(st.sampled_from(["sum", "mean", "sqrtn"])),
            name=name,
        )
        for name in table_names
    ]
    paths = draw(st.lists(_text, min_size=len(tables), max_size=len(tables) + 2, unique=True))
    features: dict[str, es.FeatureConfig] = {}
    for i, path in enumerate(paths):
        table = tables[i] if i < len(tables) else draw(st.sampled_from(tables))
        shape = draw(st.none() | st.lists(st.integers(1, 50), min_size=1, max_size=3))
        features[path] = es.FeatureConfig(
            table,
            max_sequence_length=draw(st.integers(0, 5)),
            validate_weights_and_indices=draw(st.booleans()),
            output_shape=shape,
            name=path,
        )
    limits = Limits(
        max_body_bytes=draw(st.integers(1, 1 << 40)),
        max_batch=draw(st.integers(1, 10**6)),
        max_ids_per_request=draw(st.integers(1, 10**9)),
        max_output_floats=draw(st.integers(0, 1 << 40)),
    )
    server = ServerOptions(
        inline_max_body_bytes=draw(st.integers(0, 1 << 30)),
        inline_max_output_floats=draw(st.integers(0, 1 << 30)),
        max_concurrent_lookups=draw(st.integers(0, 64)),
        header_timeout_s=draw(_seconds),
        body_timeout_s=draw(_seconds),
        drain_timeout_s=draw(st.just(0.0) | _seconds),
        max_connections=draw(st.integers(1, 10**5)),
        huge_pages=draw(st.booleans()),
        verify_tables=draw(st.booleans()),
        copy_tables=draw(st.booleans()),
    )
    return ServingConfig(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,10}", fullmatch=True)),
        checkpoint=os.path.abspath("/" + draw(_text)),
        feature_config=features,
        features=features,
        object_path=tuple(draw(st.lists(_text, min_size=1, max_size=3))),
        poll_interval_s=draw(_seconds),
        limits=limits,
        server=server,
    )


@settings(max_examples=300)
@given(configs())
def test_round_trip_of_generated_configs(config: ServingConfig) -> None:
    assert_round_trip(config)


@pytest.mark.parametrize(
    "text",
    [
        textwrap.dedent(
            """
            [model]
            name = "x"
            checkpoint = "c"
            [[tables]]
            name = "t"
            vocabulary_size = 1
            dim = 1
            [[features]]
            path = "f"
            table = "t"
            """
        ),
        GOOD,
    ],
)
def test_written_text_is_stable(text: str) -> None:
    """Writing what was read from written text gives the same text."""
    once = to_toml(parse_config(text, base_dir="/b"), base_dir="/b", defaults=True)
    assert to_toml(parse_config(once, base_dir="/b"), base_dir="/b", defaults=True) == once
