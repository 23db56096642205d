"""``embserve serve``: an HTTP embedding server speaking TensorFlow Serving's REST API.

The server is an application of embserve's public API (``import embserve as es``): it builds a
``TPUEmbeddingForServing`` from a serving config, restores it with ``es.train.Checkpoint`` from a
watched directory, and answers ``POST /v1/models/{name}:predict`` as TF Serving does.

Modules, one concept each:

- :mod:`.config`: the serving config file (TOML) → :class:`~.config.ServingConfig`.
- :mod:`.rest`: the REST codec, JSON ``"instances"`` / ``"inputs"`` ↔ numpy and back.
- :mod:`.reloader`: watches the checkpoint directory, restores new versions off the request
  path, validates and swaps them in atomically.
- :mod:`.metrics`: Prometheus counters and histograms (multi-process aware).
- :mod:`.app`: :func:`~.app.create_app`, the Starlette application.
- :mod:`.main`: :func:`~.main.serve` on uvicorn (``python -m embserve.server.main``).
- :mod:`.args`: the ``embserve serve`` command-line arguments, for the ``embserve`` CLI.

Everything but :mod:`.config` and :mod:`.args` needs the ``serve`` extra (starlette, uvicorn,
orjson, prometheus-client); importing those modules without it raises an ``ImportError`` that
says ``pip install 'embserve[serve]'``. Nothing here imports a third-party package, so this
package itself always imports.
"""

from __future__ import annotations

__all__ = ["SERVE_EXTRA_HINT", "missing_extra"]

#: How to get the server's dependencies, quoted in every "missing dependency" message.
SERVE_EXTRA_HINT = "pip install 'embserve[serve]'"


def missing_extra(exc: ImportError) -> ImportError:
    """An ``ImportError`` telling how to install the ``serve`` extra, for a failed import.

    Used as ``except ImportError as exc: raise missing_extra(exc) from exc`` around the
    third-party imports of the server modules, so ``embserve serve`` without the extra fails
    with an instruction rather than a bare ``No module named 'starlette'``.
    """
    missing = exc.name or str(exc)
    return ImportError(
        f"the embserve server needs the 'serve' extra (missing module {missing!r}); install it "
        f"with: {SERVE_EXTRA_HINT}",
        name=exc.name,
    )
