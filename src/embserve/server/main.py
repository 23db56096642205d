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

**Connections** (``[server]`` of the config, enforced by :class:`NoDelayHTTPProtocol` and the
app): a request head must arrive within ``header_timeout_s`` (10 s) of the connection opening
or of its first byte, else the connection is closed; its body within ``body_timeout_s`` (20 s)
of the head, else 408 and the connection is closed; a client that takes none of its answer
for ``body_timeout_s`` is disconnected and the answer dropped; a worker holds at most
``max_connections`` (1,000) connections and answers any beyond with 503; uvicorn closes
keep-alive connections idle for 5 s.

**Shutdown.** SIGTERM (or SIGINT) stops accepting connections, lets requests in flight finish
for up to ``drain_timeout_s`` (default ``body_timeout_s`` + 5 s = 25 s) and then cancels the
rest, stops the checkpoint watcher, and exits 0.

Exit codes (:func:`~.args.run_from_args`): 0 after a clean shutdown, 1 for a config that
cannot be served or a missing ``serve`` extra (one line on stderr), 2 for bad arguments, 3 when
uvicorn cannot start (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import json
import logging
import math
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from embserve.server import missing_extra
from embserve.server.args import add_serve_arguments, run_from_args
from embserve.server.config import ServerOptions, ServingConfig, load_config

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
    "ConnectionLimits",
    "NoDelayHTTPProtocol",
    "add_serve_arguments",
    "app_from_env",
    "http_protocol",
    "main",
    "run_from_args",
    "running",
    "serve",
    "set_tcp_nodelay",
]

#: Environment variable carrying the serve arguments to spawned worker processes (JSON).
ENV_ARGS = "EMBSERVE_SERVE_ARGS"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_log = logging.getLogger("embserve.server")


def set_tcp_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection (a no-op for other transports)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class ConnectionLimits:
    """What :class:`NoDelayHTTPProtocol` enforces per connection (from ``[server]``).

    Attributes:
        header_timeout_s: seconds a connection has to send a complete request head, from when
            it opens or from the first byte of its next request.
        max_connections: open connections per worker process; more are answered 503 and
            closed at once.
        write_timeout_s: seconds an answer may wait for a client that reads none of it (the
            server's send buffer stays full) before the connection and the answer are
            dropped; ``body_timeout_s``, the same patience the other way.
    """

    header_timeout_s: float
    max_connections: int
    write_timeout_s: float

    @classmethod
    def of(cls, options: ServerOptions) -> ConnectionLimits:
        """The limits ``options`` configure."""
        return cls(options.header_timeout_s, options.max_connections, options.body_timeout_s)


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol, with ``TCP_NODELAY`` on every connection, a deadline for request
    heads and a cap on open connections.

    ``TCP_NODELAY``: with ``--workers N`` uvicorn binds the listening socket itself with
    ``proto=0``, and asyncio then leaves Nagle's algorithm on for the accepted connections (it
    only sets ``TCP_NODELAY`` when the socket says ``IPPROTO_TCP``): every keep-alive request
    after the first waited ~40 ms for the client's delayed ACK (measured: 23 req/s instead of
    ~600 at batch 1; uvicorn issue #3149, open in uvicorn 0.54). Setting the option here fixes
    both paths whatever the uvicorn version.

    Limits (with ``connection_limits``; uvicorn passes the other arguments): uvicorn closes a
    keep-alive connection idle for 5 s, but has no deadline for a request head, so a client
    that opened a connection and sent nothing, or half a head, or a byte every few seconds,
    held it (and its buffers) forever: an outside probe found 54 of 60 half-sent requests
    still open after 75 s. Here a timer runs from the moment the connection opens, or the
    first byte of its next request arrives, until a complete head has been parsed (a new
    request cycle starts); when it fires first, the connection is closed without an answer
    (nobody is waiting for one). The body has its own deadline in the app (``408``). A
    connection beyond ``max_connections`` is answered 503 and closed as soon as it opens.

    The answer: a client that stops reading keeps its answer in this process (the transport
    buffers whatever the socket does not take), and uvicorn has no deadline for that either:
    a 390 KB request at dim 64 held 45 MB for as long as its connection stayed open. A timer
    runs while writing is paused (the transport's buffer above its high-water mark); when it
    fires and the client has taken nothing since it was armed, the connection is reset
    (``SO_LINGER`` 0, then ``abort()``), which frees the answer at once, the part in the
    kernel's send buffer too (``close()`` would wait to flush it, and a plain close leaves the
    kernel sending it); when the client took some, the timer runs again. So a slow reader is
    served however long it takes, as long as it reads something every ``write_timeout_s``:
    only a stall is cut (as nginx's ``send_timeout``).
    """

    def __init__(
        self, *args: Any, connection_limits: ConnectionLimits | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._limits = connection_limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_cycle: Any = None  # the request cycle when the timer started
        self._write_timer: asyncio.TimerHandle | None = None
        self._write_mark = 0  # _taken() when the write timer was (re)armed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_tcp_nodelay(transport)
        super().connection_made(transport)
        limits = self._limits
        if limits is None:
            return
        if len(self.connections) > limits.max_connections:
            _refuse(transport, limits.max_connections)
            return
        self._start_head_timer(self.cycle)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        between = self._head_timer is None and self._limits is not None and self._between_requests()
        super().data_received(data)
        if self._head_timer is not None:
            if self.cycle is not self._head_cycle:
                self._stop_head_timer()  # a complete head: its request cycle has started
        elif between and self.cycle is cycle:
            # The first bytes of the next request, but not yet its whole head. (A head that
            # arrives whole, the usual case, never arms the timer: ~2 us saved per request.)
            self._start_head_timer(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._limits is not None and self._write_timer is None:
            self._start_write_timer()

    def _start_write_timer(self) -> None:
        assert self._limits is not None
        self._write_mark = self._taken()
        self._write_timer = self.loop.call_later(
            self._limits.write_timeout_s, self._write_timed_out
        )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _taken(self) -> int:
        """A count that grows whenever the client takes bytes: what it acknowledged
        (``tcpi_bytes_acked``). The transport's own buffer shrinks only in steps of half the
        kernel's send buffer (the socket reports writable space no sooner), ~2 MB on loopback,
        which a client reading 64 KiB a second would need 30 s for; it is the fallback where
        ``TCP_INFO`` is missing."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None and _TCP_INFO is not None:
            with contextlib.suppress(OSError):
                info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _BYTES_ACKED_END)
                if len(info) >= _BYTES_ACKED_END:
                    acked: int = struct.unpack_from("=Q", info, _BYTES_ACKED_END - 8)[0]
                    return acked
        return -self.transport.get_write_buffer_size()

    def _write_timed_out(self) -> None:
        # Also when the transport is closing: uvicorn closes an idle keep-alive connection
        # (5 s after its last answer was handed over) with close(), which waits to flush it.
        self._write_timer = None
        if self._taken() > self._write_mark:
            self._start_write_timer()  # the client read some: still paused, but not stalled
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # reset, not FIN: the kernel drops its send buffer too (up to 4 MiB)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _between_requests(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _start_head_timer(self, cycle: Any = None) -> None:
        assert self._limits is not None
        self._head_cycle = cycle
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is self._head_cycle and not self.transport.is_closing():
            self.transport.close()


# struct tcp_info (linux/tcp.h): the u64 tcpi_bytes_acked ends at byte 128 (Linux >= 4.1).
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED_END = 128

_refusals_logged_at = [0.0]


def _refuse(transport: asyncio.BaseTransport, cap: int) -> None:
    """Answer a connection beyond the cap with 503 and close it (logged at most every 10 s)."""
    body = json.dumps(
        {"error": f"too many open connections (server.max_connections = {cap} per worker)"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(head + body)
    transport.close()
    now = time.monotonic()
    if now - _refusals_logged_at[0] >= 10.0:
        _refusals_logged_at[0] = now
        _log.warning("refusing connections beyond server.max_connections = %d", cap)


def http_protocol(options: ServerOptions) -> Any:
    """The ``http`` argument for uvicorn: :class:`NoDelayHTTPProtocol` with ``options``'
    connection limits (a ``functools.partial``, which pickles to spawned workers)."""
    return functools.partial(NoDelayHTTPProtocol, connection_limits=ConnectionLimits.of(options))


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
        "timeout_graceful_shutdown": _drain_seconds(config),
        "http": http_protocol(config.server),
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
    gracefully when the block exits (requests in flight get ``drain_timeout_s`` to finish).
    The config's connection limits and timeouts apply. Signals stay with the caller: only the
    main thread can receive them.

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
            http=http_protocol(config.server),
            timeout_graceful_shutdown=_drain_seconds(config),
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


def _drain_seconds(config: ServingConfig) -> int:
    """``drain_timeout_s`` rounded up to whole seconds (uvicorn takes an integer)."""
    return math.ceil(config.server.drain_timeout_s)


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
