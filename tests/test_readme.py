"""The README's quick-start example runs as written and prints what it says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under '## Quick start'"
    return match.group(1)


def test_quick_start_runs_and_prints_the_documented_output() -> None:
    code = _quick_start()
    printed = [line[2:] for line in code.splitlines() if line.startswith("# {")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    assert out.getvalue().strip() == "\n".join(printed)


def test_serving_config_example_is_a_valid_config() -> None:
    """The README's serving config (with its [limits] and [server] keys) parses as written."""
    from embserve.server.config import parse_config

    section = README.read_text(encoding="utf-8").split("## Serving over HTTP", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "no toml block under '## Serving over HTTP'"
    config = parse_config(match.group(1), source="README.md")
    assert config.limits.max_output_floats == 8388608
    assert config.server.verify_tables
    assert not config.server.copy_tables
    assert config.server.drain_timeout_s == config.server.body_timeout_s + 5
