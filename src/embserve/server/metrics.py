"""Prometheus metrics of one server (all its worker processes), served at ``GET /metrics``.

================================================  =========  =======================================
metric                                            type       labels / meaning
================================================  =========  =======================================
``embserve_requests_total``                       counter    ``route`` (URL template), ``code``
``embserve_request_duration_seconds``             histogram  ``route``; time in the handler
``embserve_lookup_ids_total``                     counter    ``feature``; ids looked up
``embserve_out_of_range_ids_total``               counter    ``feature``; ids refused as outside
                                                             their table (the request got 400)
``embserve_internal_errors_total``                counter    ``route``; 500 responses (bugs)
``embserve_requests_shed_total``                  counter    ``reason``: ``output_budget`` (503:
                                                             the worker's output floats in flight
                                                             would pass
                                                             ``max_output_floats_in_flight``)
``embserve_output_floats_in_flight``              gauge      output floats of the predict requests
                                                             being answered (summed over workers)
``embserve_model_version``                        gauge      the served version (0: none)
``embserve_model_loads_total``                    counter    versions restored and swapped in
``embserve_model_load_duration_seconds``          histogram  restore + validation time
``embserve_model_reload_failures_total``          counter    ``reason``; refused versions:
                                                             ``corrupt``, ``mismatch`` (remembered
                                                             until the files change); ``not_found``,
                                                             ``busy``, ``io``, ``memory``,
                                                             ``invalid``, ``error`` (retried with
                                                             backoff)
``embserve_model_verifications_total``            counter    ``result``: ``ok``, ``mismatch``,
                                                             ``error``; checksum passes over a
                                                             version's served tables
``embserve_model_verification_duration_seconds``  histogram  time of one checksum pass
``embserve_model_verified``                       gauge      1 when the served version's tables
                                                             passed their checksums; 0 while a
                                                             background check is pending, or nothing
                                                             is served
``embserve_model_revocations_total``              counter    ``reason``: ``file_changed`` (a served
                                                             data file was opened for writing or
                                                             truncated), ``corrupt`` (the background
                                                             check failed); versions taken out of
                                                             service
``embserve_model_files_protected``                gauge      1 when the served version's data files
                                                             hold read leases (no other process can
                                                             change them under the server); 0 when
                                                             they do not (leases unsupported) or
                                                             nothing is served
================================================  =========  =======================================

**Worker processes.** With ``embserve serve --workers N`` every worker counts its own requests
into prometheus-client's multi-process files (``PROMETHEUS_MULTIPROC_DIR``, which ``serve``
points at a fresh temporary directory) and ``/metrics`` sums them over the workers, whichever
worker answers the scrape. Each worker loads every version itself, so the load counters grow
by N per version; the gauges (``embserve_model_version``, ``embserve_model_verified``,
``embserve_model_files_protected``) are reported per worker (a ``pid`` label). The
multi-process mode is chosen by prometheus-client when it is imported, so the variable must be
set before that (``serve`` does); :func:`multiprocess_enabled` tells which mode is live.

**One process** (the default, and tests): the metrics live in a :class:`ServerMetrics`'s own
``CollectorRegistry``, so several apps in one process never share or collide, plus the process
collector (RSS, CPU, open files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from embserve.server import missing_extra

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        ProcessCollector,
        generate_latest,
        multiprocess,
        values,
    )
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise missing_extra(exc) from exc

__all__ = ["MULTIPROC_ENV", "ServerMetrics", "multiprocess_enabled"]

#: prometheus-client's switch to multi-process mode: the directory of its per-process files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latencies: lookups take from ~0.2 ms (one id) to seconds (a maximal batch).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Loads: metadata-only restores take milliseconds; verifying large tables takes seconds.
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def multiprocess_enabled() -> bool:
    """Whether prometheus-client runs in multi-process mode in this process.

    True only when ``PROMETHEUS_MULTIPROC_DIR`` is set *and* prometheus-client picked its
    file-backed values when it was imported (setting the variable later changes nothing).
    """
    return bool(os.environ.get(MULTIPROC_ENV)) and bool(
        getattr(values.ValueClass, "_multiprocess", False)
    )


class ServerMetrics:
    """The server's metrics, registered in a registry of their own.

    Args:
        registry: where to register (default: a new ``CollectorRegistry``).
        multiprocess: force the mode; default :func:`multiprocess_enabled`.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess: bool | None = None
    ) -> None:
        self.multiprocess = multiprocess_enabled() if multiprocess is None else multiprocess
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if not self.multiprocess:
            # Per-process figures (RSS, CPU); meaningless summed over workers, so single-process
            # only (prometheus-client's multi-process collector does not carry them either).
            ProcessCollector(registry=r)
        self.requests = Counter(
            "embserve_requests",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "embserve_request_duration_seconds",
            "Time spent answering a request, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ids = Counter(
            "embserve_lookup_ids", "Ids looked up, by feature", ["feature"], registry=r
        )
        self.out_of_range = Counter(
            "embserve_out_of_range_ids",
            "Ids refused because they lie outside their table, by feature",
            ["feature"],
            registry=r,
        )
        self.internal_errors = Counter(
            "embserve_internal_errors",
            "Requests that failed with 500 (a bug, never bad input), by route",
            ["route"],
            registry=r,
        )
        self.shed = Counter(
            "embserve_requests_shed",
            "Requests refused with 503 to keep the worker within a limit, by reason",
            ["reason"],
            registry=r,
        )
        self.floats_in_flight = Gauge(
            "embserve_output_floats_in_flight",
            "Output floats of the predict requests being answered (decoded, not yet sent)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.version = Gauge(
            "embserve_model_version",
            "The model version being served (0: none loaded)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.loads = Counter(
            "embserve_model_loads", "Model versions restored and swapped in", registry=r
        )
        self.load_seconds = Histogram(
            "embserve_model_load_duration_seconds",
            "Time to restore and validate a model version",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.reload_failures = Counter(
            "embserve_model_reload_failures",
            "New model versions refused (damaged, mismatched or unreadable), by reason",
            ["reason"],
            registry=r,
        )
        self.verifications = Counter(
            "embserve_model_verifications",
            "Checksum passes over a version's served tables, by result",
            ["result"],
            registry=r,
        )
        self.verification_seconds = Histogram(
            "embserve_model_verification_duration_seconds",
            "Time to verify the checksums of a version's served tables",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.verified = Gauge(
            "embserve_model_verified",
            "1 when the served version's tables passed their checksums, 0 otherwise",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.revocations = Counter(
            "embserve_model_revocations",
            "Versions taken out of service after they were served, by reason",
            ["reason"],
            registry=r,
        )
        self.protected = Gauge(
            "embserve_model_files_protected",
            "1 when the served version's data files are protected by read leases, else 0",
            registry=r,
            multiprocess_mode="liveall",
        )
        # Label children are cached: labels() costs more than the increment itself.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._id_children: dict[str, Counter] = {}

    # -- requests (hot path) --------------------------------------------------------------------

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (route, code)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(route, str(code))
        counter.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency_children[route] = self.latency.labels(route)
        hist.observe(seconds)

    def count_ids(self, per_feature: Mapping[str, int]) -> None:
        """Count the ids a request looked up, by feature."""
        for feature, n in per_feature.items():
            if n:
                child = self._id_children.get(feature)
                if child is None:
                    child = self._id_children[feature] = self.ids.labels(feature)
                child.inc(n)

    def count_out_of_range(self, per_feature: Mapping[str, int]) -> None:
        """Count ids refused as out of range, by feature."""
        for feature, n in per_feature.items():
            if n:
                self.out_of_range.labels(feature).inc(n)

    def count_internal_error(self, route: str) -> None:
        """Count one 500 response."""
        self.internal_errors.labels(route).inc()

    def count_shed(self, reason: str) -> None:
        """Count one request refused with 503 to stay within a limit."""
        self.shed.labels(reason).inc()

    def set_floats_in_flight(self, floats: int) -> None:
        """The output floats of the predict requests this worker is answering now."""
        self.floats_in_flight.set(floats)

    # -- versions -------------------------------------------------------------------------------

    def version_loaded(self, version: int, seconds: float) -> None:
        """A version was restored, validated and swapped in."""
        self.loads.inc()
        self.load_seconds.observe(seconds)
        self.version.set(version)

    def reload_failed(self, reason: str) -> None:
        """A new version was refused."""
        self.reload_failures.labels(reason).inc()

    def verification_done(self, result: str, seconds: float) -> None:
        """A checksum pass over a version's tables ended with ``result``."""
        self.verifications.labels(result).inc()
        self.verification_seconds.observe(seconds)

    def version_revoked(self, reason: str) -> None:
        """A version was taken out of service after it had been served."""
        self.revocations.labels(reason).inc()

    def serving(self, version: int, *, verified: bool, protected: bool) -> None:
        """What is served now (version 0: nothing), after any swap, revert or revocation."""
        self.version.set(version)
        self.verified.set(1 if version and verified else 0)
        self.protected.set(1 if version and protected else 0)

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition (summed over worker processes in multi-process mode) and its
        content type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """Forget this process's live gauges (multi-process mode), at worker shutdown."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
