"""Run the server: ``embserve serve CONFIG`` (or ``python -m embserve.server.main CONFIG``).

::

    embserve serve serving.toml [--host 127.0.0.1] [--port 8500] [--workers N]
                                [--log-level info] [--checkpoint PATH] [--model-name NAME]

``CONFIG`` is a serving config file (:mod:`.config`) or a ``package.module:attr`` reference to a
feature_config structure (then ``--checkpoint`` is required). The config is validated before
anything starts, so a bad one fails at once with its key and line.

**Workers.** ``--workers N`` (N > 1) runs N uvicorn worker processes on one listening socket.
Workers are *spawned*, not forked (GNU OpenMP, under numba's kernels, is not fork-safe): each
imports embserve and builds its app from the config through :func:`app_from_env` (the config
reaches it in the ``EMBSERVE_SERVE_ARGS`` environment variable), restores the same checkpoint
files with read-only memory maps, and so shares the tables through the page cache: N workers
hold one copy of the tables. Metrics are summed over the workers through prometheus-client's
multi-process mode, in a temporary ``PROMETHEUS_MULTIPROC_DIR`` removed at exit (one set by the
caller is used as is).

**Shutdown.** SIGTERM (or SIGINT) stops accepting connections, lets requests in flight finish,
stops the checkpoint watcher, and exits 0.

Exit codes (:func:`~.args.run_from_args`): 0 after a clean shutdown, 1 for a config that
cannot be served or a missing ``serve`` extra (one line on stderr), 2 for bad arguments, 3 when
uvicorn cannot start (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from embserve.server import missing_extra
from embserve.server.args import add_serve_arguments, run_from_args
from embserve.server.config import ServingConfig, load_config

try:
    # The app's dependencies are checked here too, so `serve` fails before it starts anything.
    import orjson  # noqa: F401
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn
    import uvicorn.config
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
except ImportError as exc:
    raise missing_extra(exc) from exc

__all__ = [
    "ENV_ARGS",
    "NoDelayHTTPProtocol",
    "add_serve_arguments",
    "app_from_env",
    "main",
    "run_from_args",
    "running",
    "serve",
    "set_tcp_nodelay",
]

#: Environment variable carrying the serve arguments to spawned worker processes (JSON).
ENV_ARGS = "EMBSERVE_SERVE_ARGS"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def set_tcp_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection (a no-op for other transports)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol, with ``TCP_NODELAY`` set on every connection.

    With ``--workers N`` uvicorn binds the listening socket itself with ``proto=0``, and
    asyncio then leaves Nagle's algorithm on for the accepted connections (it only sets
    ``TCP_NODELAY`` when the socket says ``IPPROTO_TCP``): every keep-alive request after the
    first waited ~40 ms for the client's delayed ACK (measured: 23 req/s instead of ~600 at
    batch 1; uvicorn issue #3149, open in uvicorn 0.54). Setting the option here fixes both
    paths whatever the uvicorn version.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_tcp_nodelay(transport)
        super().connection_made(transport)


def _log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging config, plus embserve's logger on the same handler and format."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["embserve"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    return config


def app_from_env() -> Any:
    """The app factory each spawned worker calls (``embserve.server.main:app_from_env``)."""
    from embserve.server.app import create_app

    raw = os.environ.get(ENV_ARGS)
    if not raw:
        raise RuntimeError(f"{ENV_ARGS} is not set; start workers with embserve serve")
    args = json.loads(raw)
    config = load_config(args["config"], checkpoint=args.get("checkpoint"), name=args.get("name"))
    return create_app(config)


def serve(
    config_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8500,
    workers: int = 1,
    log_level: str = "info",
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    access_log: bool = True,
) -> None:
    """Serve the model of ``config_path`` on ``host:port`` until SIGTERM / SIGINT.

    Args:
        config_path: a serving config file, or a ``package.module:attr`` reference.
        host: the address to listen on.
        port: the TCP port.
        workers: worker processes (1: serve in this process).
        log_level: uvicorn's and embserve's log level.
        checkpoint: overrides the config's checkpoint path (required with a reference).
        model_name: overrides the config's model name.
        access_log: log one line per request.

    Raises:
        ServingConfigError: the config cannot be served (raised before anything starts).
        SystemExit: uvicorn could not start (code 3).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    spec = os.fspath(config_path)
    ckpt = os.path.abspath(os.fspath(checkpoint)) if checkpoint is not None else None
    config = load_config(spec, checkpoint=ckpt, name=model_name)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level.lower(),
        "log_config": _log_config(log_level),
        "access_log": access_log,
        "timeout_graceful_shutdown": None,  # drain every request in flight
        "http": NoDelayHTTPProtocol,
    }
    # uvicorn re-raises the shutdown signal through the handler it found at start; with the
    # default one, SIGTERM would kill the process after the graceful drain (exit -15).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _ignore_after_drain) if in_main_thread else None
    try:
        if workers == 1:
            from embserve.server.app import create_app

            _start(create_app(config), common)
            return
        spec_abs = os.path.abspath(spec) if os.path.exists(spec) else spec
        os.environ[ENV_ARGS] = json.dumps(
            {"config": spec_abs, "checkpoint": ckpt, "name": model_name}
        )
        own_dir = None
        if not os.environ.get(_MULTIPROC_ENV):
            own_dir = tempfile.mkdtemp(prefix="embserve-metrics-")
            os.environ[_MULTIPROC_ENV] = own_dir
        try:
            _start(
                "embserve.server.main:app_from_env", {**common, "factory": True, "workers": workers}
            )
        finally:
            if own_dir is not None:
                os.environ.pop(_MULTIPROC_ENV, None)
                shutil.rmtree(own_dir, ignore_errors=True)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running(
    config: ServingConfig | str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    start_timeout: float = 120.0,
) -> Iterator[str]:
    """Run the server in a background thread of this process; yield its base URL.

    For demos, notebooks and benchmarks that need a live server next to their own code
    (``with running("serving.toml") as url: ...``). ``port=0`` picks a free port. The server
    has loaded the checkpoint (or failed to) when the URL is yielded, and is shut down
    gracefully (requests in flight finish) when the block exits. Signals stay with the caller:
    only the main thread can receive them.

    Raises:
        ServingConfigError: the config cannot be served.
        RuntimeError: the server did not start within ``start_timeout`` seconds.
    """
    from embserve.server.app import create_app

    if not isinstance(config, ServingConfig):
        config = load_config(config)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            log_level=log_level,
            log_config=_log_config(log_level),
            access_log=False,
            lifespan="on",
            http=NoDelayHTTPProtocol,
        )
    )
    thread = threading.Thread(target=server.run, name="embserve-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(start_timeout)
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(start_timeout)


def _ignore_after_drain(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's graceful shutdown: already handled; exit normally."""


def _start(app: Any, options: dict[str, Any]) -> None:
    """``uvicorn.run``; it exits with code 3 when it cannot start (port taken, app failed)."""
    uvicorn.run(app, **options)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m embserve.server.main CONFIG [options]``."""
    parser = argparse.ArgumentParser(
        prog="embserve serve",
        description="Serve a TPU embedding model over TensorFlow Serving's REST API.",
    )
    add_serve_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
