"""The Starlette application: TF Serving's REST routes over one hot-reloaded model.

================================================  ============================================
route                                             answer
================================================  ============================================
``POST /v1/models/{name}:predict``                the lookup (:mod:`.rest` formats)
``POST /v1/models/{name}/versions/{v}:predict``   the same, only while version ``v`` is served
``GET /v1/models/{name}``                         ``{"model_version_status": [...]}``
``GET /v1/models/{name}/versions/{v}``            that version's status
``GET /v1/models/{name}/metadata``                features, tables, dims, combiners, shapes
``GET /healthz``                                  200 while a version is served, else 503
``GET /metrics``                                  Prometheus text format
================================================  ============================================

**Errors** are TF Serving's ``{"error": "..."}``: 400 for bad input (the message names the
feature and what is wrong: unknown feature, wrong JSON type, id out of range, too many ids,
examples or output floats, a version beyond int64), 404 for an unknown model, version or
route, 408 for a body that has not arrived ``[server] body_timeout_s`` after the request's
head, 413 for a body over ``limits.max_body_bytes`` (read with that cap, never whole; 408 and
413 close the connection), 503 while no version is loaded.
Bad input never gets a 500: a 500 means a bug. Its answer is a bare
``{"error": "Internal Server Error"}`` (the exception's type and message could tell a client
about the server's insides); the detail is logged with its traceback and counted in
``embserve_internal_errors_total``.

**Where a request runs.** A predict request reads the served
:class:`~.reloader.LoadedVersion` once, after its body has arrived, through
:meth:`~.reloader.Reloader.use`, which counts it in flight on that version until its answer is
built: a reload swapping the version meanwhile does not affect it, and a version taken out of
service is released only after its requests. A body over ``[server] inline_max_body_bytes``
(256 KiB) is decoded in one of two *codec threads*, where the interpreter hands the GIL back to
the event loop every few milliseconds instead of stalling it for the whole parse (a single
``orjson.loads`` call still holds the GIL for its whole body: about 11 ms per MB). A smaller
body is decoded on the loop. Where the lookup runs is decided by the request's work, not its
body (a 3 KB body can ask for megabytes of output): on the loop when the request's output
floats, and its ids times the largest table dim, both stay within ``[server]
inline_max_output_floats`` (32,768: the size from which lookups use numba's parallel kernels),
otherwise in a *lookup thread*, whose kernels release the GIL and run beside the loop. The
answer is encoded on the loop, unless it holds more than 4 × 65,536 floats: then in a codec
thread, in calls of 65,536 floats (``rest.ENCODE_PIECE_FLOATS``, ~2 ms each), so the loop runs
between them. Moving the encoding of batch-256 answers off the loop cost 16% of their
throughput with 8 clients, and small requests stay on the loop altogether because their work
is mostly GIL-bound JSON and Python, where a thread only adds a hand-off and GIL contention (on
2 cores, batch-1 requests with 26 features from 4 clients ran at 635 req/s inline against 296
req/s through a pool).

**Output budget.** The output floats of the predict requests a worker is answering, from
decoding until the answer is sent, are bounded by ``[limits] max_output_floats_in_flight``
(default twice ``max_output_floats``): a request that would pass it gets 503 with
``Retry-After: 1``, is counted in ``embserve_requests_shed_total{reason="output_budget"}``, and
allocated nothing; ``embserve_output_floats_in_flight`` shows the floats held. One request is
always admitted when none is in flight. This bounds a worker's output memory (outputs, their
JSON) under any number of concurrent large requests, each of which passed ``max_output_floats``.

**Lookup threads** are a pool of ``[server] max_concurrent_lookups`` threads (default: the
usable CPU cores divided by numba's kernel threads, at least 1); requests beyond it wait their
turn. Every thread that calls numba's parallel kernels starts its own OpenMP team, so running
lookups in anyio's 40 default threads let 8 concurrent clients on a 2-core machine keep 20 OS
threads competing for 2 cores; with the bound, only these threads ever run parallel kernels
(the loop runs serial ones only). Responses to predict, status, metadata and health requests
carry the served version in the ``X-Model-Version`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import embserve as es
from embserve.lookup import kernel_threads
from embserve.server import missing_extra
from embserve.server.config import ServingConfig
from embserve.server.metrics import ServerMetrics
from embserve.server.reloader import LoadedVersion, Loader, Reloader, make_loader
from embserve.server.rest import ENCODE_PIECE_FLOATS, DecodedRequest, RequestError, RestCodec

try:
    import orjson
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise missing_extra(exc) from exc

__all__ = ["ROUTES", "create_app", "lookup_threads"]

_log = logging.getLogger("embserve.server")

#: Route templates, also the ``route`` label of the request metrics.
ROUTES = {
    "predict": "/v1/models/{name}:predict",
    "predict_version": "/v1/models/{name}/versions/{version}:predict",
    "status": "/v1/models/{name}",
    "status_version": "/v1/models/{name}/versions/{version}",
    "metadata": "/v1/models/{name}/metadata",
    "metadata_version": "/v1/models/{name}/versions/{version}/metadata",
    "healthz": "/healthz",
    "metrics": "/metrics",
}
_UNMATCHED = "unmatched"
_CLOSE = {"Connection": "close"}
_INT64_MAX = 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))
_CLIENT_CLOSED = 499
_RETRY_AFTER = {"Retry-After": "1"}
# Codec threads: decoding bodies over inline_max_body_bytes and encoding answers over
# _ENCODE_INLINE_MAX_FLOATS. Both hold the GIL (orjson), so more threads add no speed; two
# keep one long parse from queueing every other large request behind it.
_CODEC_THREADS = 2
# Answers with more output floats are encoded in a codec thread, in pieces (rest.py's
# ENCODE_PIECE_FLOATS), so that the loop runs between pieces: at ~28 ns per float this many
# hold it ~7 ms when encoded inline. Smaller answers stay on the loop: moving the encoding of
# batch-256 answers (106k floats) off it cost 16% of their throughput with 8 clients.
_ENCODE_INLINE_MAX_FLOATS = 4 * ENCODE_PIECE_FLOATS

Endpoint = Callable[[Request], Awaitable[Response]]


def lookup_threads(configured: int = 0) -> int:
    """How many lookups may run at once: ``configured``, or for ``0`` the usable CPU cores
    divided by the threads each parallel kernel call uses (numba's thread count; 1 when
    embserve runs serial kernels), at least 1."""
    if configured > 0:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // kernel_threads())


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


def _cut(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message (URLs can be kilobytes long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


class _BodyDeadlines:
    """The deadlines of the request bodies being read, enforced by one periodic sweep.

    A body must have arrived ``timeout_s`` after its request's head (a total deadline: a
    client trickling a byte at a time cannot extend it). A per-request timer
    (``asyncio.timeout``) cost 5-9 us per request, most of it for bodies that had arrived
    with their head; registering in a dict costs ~0.5 us, and one task wakes every
    ``timeout_s / 4`` (at most 1 s), cancelling the reads past their deadline. So a body is
    cut between ``timeout_s`` and ``timeout_s`` plus that period.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.period_s = min(1.0, timeout_s / 4)
        self.reading: dict[asyncio.Task[Any], float] = {}  # task -> deadline (loop time)
        self.expired: set[asyncio.Task[Any]] = set()

    async def sweep(self) -> None:
        """Cancel the reads past their deadline, every ``period_s``, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period_s)
            now = loop.time()
            for task, deadline in list(self.reading.items()):
                if deadline <= now and task not in self.expired:
                    self.expired.add(task)
                    task.cancel()

    async def read(self, request: Request, limit: int) -> bytes:
        """The request body, refused with 413 as soon as it exceeds ``limit`` bytes, and with
        408 when it has not fully arrived in time."""
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise RequestError(400, f"invalid Content-Length header {declared!r}") from None
            if size > limit:
                raise RequestError(
                    413,
                    f"request body of {size} bytes exceeds the limit of {limit} bytes "
                    "(limits.max_body_bytes)",
                )
        task = asyncio.current_task()
        assert task is not None
        self.reading[task] = asyncio.get_running_loop().time() + self.timeout_s
        chunks: list[bytes] = []
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise RequestError(
                        413,
                        f"request body exceeds the limit of {limit} bytes (limits.max_body_bytes)",
                    )
                chunks.append(chunk)
        except asyncio.CancelledError:
            if task not in self.expired:
                raise  # cancelled by someone else (a drain past its timeout)
            task.uncancel()
            raise RequestError(
                408,
                f"request body not received within {self.timeout_s:g} s ({received} bytes "
                "arrived; server.body_timeout_s)",
            ) from None
        finally:
            del self.reading[task]
            self.expired.discard(task)
        return b"".join(chunks)


class _OutputBudget:
    """The output floats of the predict requests one worker is answering
    (``[limits] max_output_floats_in_flight``), from decoding until the answer is sent.

    Taken and given back on the event loop only, so it needs no lock. One request is always
    admitted when nothing is in flight, so a request within ``max_output_floats`` can never be
    refused forever by a budget set below it.
    """

    __slots__ = ("limit", "metrics", "used")

    def __init__(self, limit: int, metrics: ServerMetrics) -> None:
        self.limit = limit
        self.used = 0
        self.metrics = metrics

    def take(self, floats: int) -> bool:
        """Reserve ``floats``; ``False`` (nothing reserved) when they do not fit."""
        if self.used and self.used + floats > self.limit:
            return False
        self.used += floats
        self.metrics.set_floats_in_flight(self.used)
        return True

    def give(self, floats: int) -> None:
        """Return what :meth:`take` reserved."""
        self.used -= floats
        self.metrics.set_floats_in_flight(self.used)


class _HeldResponse(Response):
    """A predict answer that gives its output floats back to the budget once it has been sent,
    or once sending it failed or was cancelled (a client that left, a connection reset)."""

    def __init__(self, content: bytes, headers: Mapping[str, str], release: Callable[[], None]):
        super().__init__(content, media_type="application/json", headers=headers)
        self._release: Callable[[], None] | None = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class _Service:
    """The handlers of one app: the config, the codec, the reloader and the metrics."""

    def __init__(self, config: ServingConfig, reloader: Reloader, metrics: ServerMetrics) -> None:
        self.config = config
        self.reloader = reloader
        self.metrics = metrics
        self.codec = RestCodec(config.features, config.limits)
        self.metadata_body = self._metadata()
        self.bodies = _BodyDeadlines(config.server.body_timeout_s)
        # ids x this bounds the floats a lookup reads (for where a request runs)
        self.max_dim = max(t.dim for t in config.tables)
        self.budget = _OutputBudget(config.limits.max_output_floats_in_flight, metrics)
        # Threads are started on first use; shut down with the app's lifespan.
        self.lookups = ThreadPoolExecutor(
            lookup_threads(config.server.max_concurrent_lookups),
            thread_name_prefix="embserve-lookup",
        )
        self.codecs = ThreadPoolExecutor(_CODEC_THREADS, thread_name_prefix="embserve-codec")

    # -- plumbing -------------------------------------------------------------------------------

    def instrument(self, route: str, handler: Endpoint) -> Endpoint:
        """``handler`` with errors turned into responses and the request counted."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except RequestError as exc:
                # 408 / 413 leave the body unread: close rather than read what is left.
                close = _CLOSE if exc.status in (408, 413) else None
                response = _error(exc.status, exc.message, close or exc.headers)
            except ClientDisconnect:
                # The client left mid-upload: nobody to answer, and no bug. Counted as 499,
                # nginx's "client closed request".
                response = _error(_CLIENT_CLOSED, "client closed the request")
            except Exception:
                # A bug: the detail goes to the log (with the traceback) and the metric, never
                # to the client, whom it would tell about the server's insides (Starlette's
                # ServerErrorMiddleware does the same).
                _log.exception("internal error answering %s %s", request.method, request.url.path)
                self.metrics.count_internal_error(route)
                response = _error(500, "Internal Server Error")
            self.metrics.observe_request(route, response.status_code, time.perf_counter() - started)
            return response

        return endpoint

    def _model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.config.name:
            raise RequestError(
                404,
                f"Servable not found for request: Latest({_cut(name)}) (this server serves "
                f"model {self.config.name!r})",
            )

    def _loaded(self) -> LoadedVersion:
        loaded = self.reloader.current
        if loaded is None:
            raise self._unavailable()
        return loaded

    def _unavailable(self) -> RequestError:
        detail = self.reloader.last_error
        return RequestError(
            503,
            f"model {self.config.name!r} has no version loaded yet (watching "
            f"{self.config.checkpoint})" + (f"; last load error: {detail}" if detail else ""),
        )

    def _check_version(self, loaded: LoadedVersion, version: int | None) -> None:
        if version is not None and version != loaded.version:
            raise RequestError(
                404,
                f"Servable not found for request: Specific({self.config.name}, {version}) "
                f"(serving version {loaded.version})",
            )

    def _version(self, request: Request) -> int | None:
        """The URL's version: ASCII digits within int64 (TF Serving's ``\\d+`` and
        ``SimpleAtoi``).

        Anything else is a 404 (the route does not exist), digits beyond int64 a 400.
        ``str.isdigit`` alone also passes Unicode digits: ``²`` and ``①`` then failed in
        ``int()`` (a 500) and ``١`` or ``１`` were read as version 1; and ``int()`` refuses
        strings over 4,300 digits.
        """
        raw: str | None = request.path_params.get("version")
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit()):
            raise RequestError(
                404,
                f"Servable not found for request: Specific({self.config.name}, "
                f"{_cut(raw)}) (versions are numbers)",
            )
        digits = raw.lstrip("0") or "0"
        if len(digits) > _INT64_DIGITS or int(digits) > _INT64_MAX:
            raise RequestError(400, f"Failed to convert version: {_cut(raw)} does not fit in int64")
        return int(digits)

    # -- predict --------------------------------------------------------------------------------

    async def predict(self, request: Request) -> Response:
        self._model(request)
        version = self._version(request)
        self._check_version(self._loaded(), version)  # 503 / 404 before reading a body
        body = await self.bodies.read(request, self.config.limits.max_body_bytes)
        # The version is read once, and the request counted in flight on it until its answer
        # is built: a reload swapping it meanwhile does not affect this request, and a version
        # taken out of service (files changed in place) is released only after its requests.
        with self.reloader.use() as loaded:
            if loaded is None:
                raise self._unavailable()
            self._check_version(loaded, version)
            if len(body) > self.config.server.inline_max_body_bytes:
                decoded = await self._in_thread(self.codecs, self.codec.decode, body)
            else:
                decoded = self.codec.decode(body)
            floats = decoded.output_floats
            if not self.budget.take(floats):
                self.metrics.count_shed("output_budget")
                raise RequestError(
                    503,
                    f"the server is answering {self.budget.used} output floats already and "
                    f"this request's {floats} would pass its limit "
                    f"(limits.max_output_floats_in_flight = {self.budget.limit}); retry later",
                    _RETRY_AFTER,
                )
            try:
                payload = await self._payload(loaded, decoded)
            except BaseException:
                self.budget.give(floats)
                raise
        return _HeldResponse(
            payload, {"X-Model-Version": str(loaded.version)}, lambda: self.budget.give(floats)
        )

    async def _payload(self, loaded: LoadedVersion, request: DecodedRequest) -> bytes:
        """The answer's body: looked up on the loop when small, else in a lookup thread (whose
        kernels release the GIL and run beside the loop); encoded on the loop unless large."""
        inline = self.config.server.inline_max_output_floats
        if not request.features or (
            request.output_floats <= inline and request.num_ids * self.max_dim <= inline
        ):
            return self._answer(loaded, request)
        outputs = await self._in_thread(self.lookups, self._lookup, loaded, request)
        if request.output_floats > _ENCODE_INLINE_MAX_FLOATS:
            return await self._in_thread(self.codecs, self._encode, request, outputs)
        return self._encode(request, outputs)

    @staticmethod
    async def _in_thread(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in one of ``pool``'s threads (waiting for one to be free)."""
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _answer(self, loaded: LoadedVersion, request: DecodedRequest) -> bytes:
        """Look up and encode a decoded request."""
        if not request.features:
            return b'{"predictions":[]}'
        return self._encode(request, self._lookup(loaded, request))

    def _encode(self, request: DecodedRequest, outputs: Any) -> bytes:
        """Count the ids looked up and encode the answer."""
        self.metrics.count_ids(request.ids_per_feature)
        return self.codec.encode(request, outputs)

    def _lookup(self, loaded: LoadedVersion, request: DecodedRequest) -> Any:
        """The lookup's outputs; 400 for bad input, 503 when the version was withdrawn (its
        tables fenced to zeros) before the lookup's last read."""
        try:
            outputs = loaded.model(request.ids, request.weights)
        except es.IdOutOfRangeError as exc:
            self.metrics.count_out_of_range(self.codec.out_of_range_counts(request))
            raise RequestError(400, str(exc)) from None
        except es.InputError as exc:
            raise RequestError(400, str(exc)) from None
        # A request that waited longer than the revoker's revoke_wait_s (queued for a lookup
        # thread behind others) may have read the zero pages of a fenced version. The revoker
        # sets `fenced` before the fence starts; this check comes after the lookup's last read
        # of the tables (the outputs are buffers of their own, never views of a table, and
        # parallel kernels have joined when the call returns). So `False` here means the fence
        # had not begun when every read was done: the outputs are the real rows. `True` means
        # they may be zeros: never a 200 with them.
        if loaded.fenced:
            raise RequestError(
                503,
                f"version {loaded.version} of model {self.config.name!r} was withdrawn while "
                "this request was being answered (its checkpoint files were changed in place); "
                "retry the request",
            )
        return outputs

    # -- status and metadata --------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        self._model(request)
        version = self._version(request)
        statuses = self.reloader.statuses()
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise RequestError(
                    404, f"Could not find version {version} of model {self.config.name}"
                )
        body = {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for s in statuses
            ]
        }
        loaded = self.reloader.current
        headers = {"X-Model-Version": str(loaded.version)} if loaded is not None else None
        return _json(body, headers=headers)

    def _metadata(self) -> dict[str, Any]:
        """The metadata route's body, from each feature's spec (the lookup's own rules)."""
        features: dict[str, Any] = {}
        for path, spec in self.codec.specs.items():
            example = spec.example_shape
            features[path] = {
                "table": spec.table,
                "dim": spec.dim,
                "combiner": spec.combiner,
                "max_sequence_length": spec.max_sequence_length,
                "output_shape": None if spec.output_shape is None else list(spec.output_shape),
                "validate_weights_and_indices": spec.validate_weights_and_indices,
                "example_output_shape": None if example is None else list(example),
            }
        tables = {
            str(t.name): {
                "vocabulary_size": t.vocabulary_size,
                "dim": t.dim,
                "combiner": t.combiner,
            }
            for t in self.config.tables
        }
        return {"features": features, "tables": tables}

    async def metadata(self, request: Request) -> Response:
        self._model(request)
        version = self._version(request)
        loaded = self.reloader.current
        if version is not None and (loaded is None or loaded.version != version):
            raise RequestError(
                404, f"Servable not found for request: Specific({self.config.name}, {version})"
            )
        body = {
            "model_spec": {
                "name": self.config.name,
                "signature_name": "serving_default",
                "version": None if loaded is None else str(loaded.version),
            },
            "metadata": self.metadata_body,
        }
        headers = {"X-Model-Version": str(loaded.version)} if loaded is not None else None
        return _json(body, headers=headers)

    # -- operations -----------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        loaded = self._loaded()
        return _json(
            {"status": "ok", "model": self.config.name, "version": str(loaded.version)},
            headers={"X-Model-Version": str(loaded.version)},
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    async def not_found(self, request: Request, exc: Exception) -> Response:
        """Unknown routes and methods: TF Serving's "Malformed request" (404 / 405)."""
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        headers = exc.headers if isinstance(exc, HTTPException) else None
        self.metrics.observe_request(_UNMATCHED, status, 0.0)
        return _error(
            status, f"Malformed request: {request.method} {_cut(request.url.path, 200)}", headers
        )


def create_app(
    config: ServingConfig,
    *,
    model_loader: Loader | None = None,
    metrics: ServerMetrics | None = None,
    reloader: Reloader | None = None,
) -> Starlette:
    """The server for ``config``'s model, as a Starlette (ASGI) application.

    Its lifespan starts the reloader (which loads the current checkpoint before the first
    request is accepted, then watches for new ones) and stops it at shutdown.

    Args:
        config: the serving config.
        model_loader: prefix → restored, validated serving object; default
            :func:`~.reloader.make_loader` (``es.train.Checkpoint(...).restore`` and a smoke
            lookup). A hook for tests and for loaders with other policies.
        metrics: where to count (default: new :class:`~.metrics.ServerMetrics` with a
            registry of their own).
        reloader: a ready :class:`~.reloader.Reloader` (then ``model_loader`` is unused).

    The app's ``state`` holds ``config``, ``reloader`` and ``metrics`` for callers and tests.
    """
    metrics = metrics if metrics is not None else ServerMetrics()
    if reloader is None:
        reloader = Reloader(
            config.checkpoint,
            model_loader if model_loader is not None else make_loader(config),
            poll_interval_s=config.poll_interval_s,
            metrics=metrics,
            name=config.name,
        )
    service = _Service(config, reloader, metrics)

    def route(key: str, handler: Endpoint, method: str) -> Route:
        return Route(ROUTES[key], service.instrument(ROUTES[key], handler), methods=[method])

    routes = [
        route("predict", service.predict, "POST"),
        route("predict_version", service.predict, "POST"),
        route("metadata", service.metadata, "GET"),
        route("metadata_version", service.metadata, "GET"),
        route("status_version", service.status, "GET"),
        route("status", service.status, "GET"),
        route("healthz", service.healthz, "GET"),
        route("metrics", service.metrics_endpoint, "GET"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(reloader.start)
        sweeper = asyncio.create_task(service.bodies.sweep(), name="embserve-body-deadlines")
        # Everything imported and loaded so far lives as long as the process: move it out of
        # the collector's generations. A full collection over the ~121k objects of the
        # imports took ~50 ms (stalling every request in flight); after freezing, ~0.75 ms.
        gc.freeze()
        try:
            yield
        finally:
            sweeper.cancel()
            service.lookups.shutdown(wait=False, cancel_futures=True)
            service.codecs.shutdown(wait=False, cancel_futures=True)
            await run_in_threadpool(reloader.stop)
            metrics.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: service.not_found},
    )
    app.state.config = config
    app.state.reloader = reloader
    app.state.metrics = metrics
    return app
