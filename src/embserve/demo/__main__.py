"""``python -m embserve.demo`` (``make demo``, ``embserve demo``): a checkpoint, served and queried.

In a few seconds, and leaving nothing behind:

1. writes the demo model (:func:`embserve.demo.build_demo_model`) as a TensorFlow-format
   checkpoint with its serving config into a temporary directory;
2. starts the real server (:func:`embserve.server.main.running`: uvicorn + Starlette, as
   ``embserve serve serving.toml`` runs it) on a free loopback port;
3. asks it over HTTP, with the standard library's :mod:`urllib`, for the model's status
   (``GET /v1/models/demo``), one prediction with dense, ragged, sequence and weighted features
   (``POST /v1/models/demo:predict``), and one with an out-of-range id (a 400);
4. prints each request and answer, checks the served activations against the in-process lookup
   of the model that was saved, stops the server gracefully and removes the directory.

Exit code 0 when every answer is the expected one; 1 otherwise (or without the ``serve``
extra), with the reason on stderr.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

import numpy as np

import embserve as es
from embserve.demo import MODEL_NAME, demo_request, demo_request_body, write_demo_files

__all__ = ["main"]

_DECIMALS = 3
_WIDTH = 96  # pretty JSON puts a list or object on one line when it fits in this width
_TIMEOUT_S = 30.0

#: What each feature of the request shows (printed above the request).
_FEATURE_NOTES = {
    "user_id": "one id per example: a dense feature, table 'users' (sum)",
    "watched_items": "a bag of ids per example: ragged, averaged by table 'items' (mean)",
    "recent_items": "a sequence: the first 3 ids in order, one row each, zero-padded → [3, 8]",
    "liked_categories": "a weighted bag: ids and weights, table 'categories' (sqrtn)",
}


class DemoError(Exception):
    """The server did not answer as the demo expects."""


def _http(base_url: str, method: str, path: str, body: Any = None) -> tuple[int, Any, int, float]:
    """One HTTP request with :mod:`urllib`; returns (status, decoded JSON, bytes, ms).

    An HTTP error status is an answer here (the demo shows a 400 on purpose), not an exception.
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(base_url + path, data=data, method=method, headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    elapsed_ms = (time.perf_counter() - started) * 1e3
    return status, json.loads(raw), len(raw), elapsed_ms


def _rounded(value: Any, decimals: int = _DECIMALS) -> Any:
    """``value`` with every float rounded (nested lists and dicts), for printing."""
    if isinstance(value, float):
        return round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, list):
        return [_rounded(v, decimals) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, decimals) for k, v in value.items()}
    return value


def pretty_json(value: Any, indent: int = 0, column: int = 0) -> str:
    """Indented JSON that keeps a list or object on one line when it fits in the width.

    ``json.dumps(indent=2)`` would put every number of an activation row on its own line;
    here a row stays a row, and a sequence feature's ``[3, 8]`` output reads as 3 lines.
    ``column`` is where on its line the value starts (after its key), ``indent`` its depth.
    """
    compact = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    if len(compact) + column <= _WIDTH or not isinstance(value, (list, dict)) or not value:
        return compact
    inner = "  " * (indent + 1)
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            head = f"{inner}{json.dumps(k, ensure_ascii=False)}: "
            items.append(head + pretty_json(v, indent + 1, len(head)))
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    items = [inner + pretty_json(v, indent + 1, len(inner)) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"


def _section(out: TextIO, title: str) -> None:
    out.write(f"\n{title}\n")


def _show_checkpoint(out: TextIO, prefix: str, model: es.TPUEmbeddingForServing) -> None:
    """The checkpoint's path and its tables with their slots."""
    out.write(f"checkpoint  {prefix}  (TensorFlow's format, es.train.Checkpoint.save)\n")
    for table, values in model.embedding_tables.items():
        slots = ", ".join(s for s in model.variables[table.name] if s != "parameters")
        out.write(
            f"  {table.name:<11} {values.shape[0]:>5} x {values.shape[1]}  "
            f"combiner={table.combiner:<5}  optimizer slots: {slots}\n"
        )


def _expected_predictions(model: es.TPUEmbeddingForServing) -> dict[str, np.ndarray]:
    """The in-process lookup of the demo request on the model that was saved."""
    features, weights = demo_request()
    result: dict[str, np.ndarray] = model(features, weights)
    return result


def _check_predictions(answer: Any, expected: dict[str, np.ndarray]) -> None:
    """Raise :class:`DemoError` unless the served predictions equal the in-process lookup."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or len(predictions) != 2:
        raise DemoError(f"expected 2 predictions, got {answer!r}")
    for name, values in expected.items():
        served = np.array([p[name] for p in predictions], dtype=np.float32)
        if served.shape != values.shape or not np.allclose(served, values, atol=1e-6):
            raise DemoError(f"feature {name!r}: served {served.tolist()}, expected {values}")


def _run(out: TextIO) -> None:
    """The demo itself; raises on any unexpected answer (see :func:`main`)."""
    from embserve.server.main import running  # needs the 'serve' extra

    started = time.perf_counter()
    out.write(
        f"embserve {es.__version__} demo: a TensorFlow checkpoint, served over TF Serving's "
        "REST API\n"
    )
    with tempfile.TemporaryDirectory(prefix="embserve-demo-") as tmp:
        files = write_demo_files(tmp)
        _show_checkpoint(out, files.checkpoint, files.model)
        expected = _expected_predictions(files.model)
        out.write(f"config      {files.config}\n")
        with running(files.config) as url:
            out.write(f"server      {url}  (embserve serve, in a background thread)\n")

            path = f"/v1/models/{MODEL_NAME}"
            status, answer, _, _ = _http(url, "GET", path)
            _section(out, f"GET {path}  →  {status}")
            out.write(pretty_json(answer) + "\n")
            if status != 200:
                raise DemoError(f"GET {path} answered {status}: {answer}")

            path = f"/v1/models/{MODEL_NAME}:predict"
            body = demo_request_body()
            _section(out, f"POST {path}")
            for name, note in _FEATURE_NOTES.items():
                out.write(f"  # {name}: {note}\n")
            out.write(pretty_json(body) + "\n")
            status, answer, size, ms = _http(url, "POST", path, body)
            _section(
                out,
                f"→  {status}  ({size:,} bytes in {ms:.1f} ms; float32 activations, "
                f"rounded here to {_DECIMALS} decimals)",
            )
            out.write(pretty_json(_rounded(answer)) + "\n")
            if status != 200:
                raise DemoError(f"POST {path} answered {status}: {answer}")
            _check_predictions(answer, expected)

            bad = {"instances": [{"user_id": 1000}]}
            _section(out, f"POST {path}  with an id out of range (table 'users' has 1000 rows)")
            out.write(pretty_json(bad) + "\n")
            status, answer, _, _ = _http(url, "POST", path, bad)
            _section(out, f"→  {status}")
            out.write(pretty_json(answer) + "\n")
            if status != 400:
                raise DemoError(f"an out-of-range id answered {status}, not 400: {answer}")
        elapsed = time.perf_counter() - started
        out.write(
            "\nresult: the served activations equal the in-process lookup of the saved model, "
            "and bad input is a 400.\n"
            f"The server has stopped and the demo's files are removed ({elapsed:.1f} s).\n"
            "To serve a checkpoint of your own: embserve inspect CKPT --config > serving.toml "
            "writes a skeleton config to complete; then embserve serve serving.toml\n"
        )


def main(out: TextIO | None = None) -> int:
    """Run the demo, printing to ``out`` (default stdout); return the exit code.

    Returns:
        0 when every answer was the expected one; 1 otherwise, or when the ``serve`` extra is
        missing (the reason on stderr).
    """
    stream = sys.stdout if out is None else out
    try:
        _run(stream)
    except (DemoError, ImportError, OSError) as exc:
        stream.flush()
        sys.stderr.write(f"embserve demo: error: {exc}\n")
        return 1
    stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
