"""The server as a real process on a loopback port: hot reload under load, a damaged version
refused under load, SIGTERM draining requests in flight, worker processes sharing the tables.

Every wait is a polling loop with a generous deadline (these run on loaded 2-core machines);
no sleep is an assertion. Loads are bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embserve as es
from tests.server._support import (
    HOST,
    MODEL,
    amplification_body,
    bag,
    free_port,
    http_request,
    metric,
    random_tables,
    save_damaged_version,
    save_version,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

PREDICT = f"/v1/models/{MODEL}:predict"
START_TIMEOUT = 90.0  # importing numba and embserve on a busy machine, plus the first load
WAIT_TIMEOUT = 60.0


class Server:
    """``python -m embserve.server.main CONFIG --port P`` as a subprocess."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        self.config = config
        self.log_path = log
        self.args = args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        for _attempt in range(3):  # another process may grab the free port before we bind it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "embserve.server.main",
                        str(self.config),
                        "--host",
                        HOST,
                        "--port",
                        str(self.port),
                        "--no-access-log",
                        *self.args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            if self._wait_healthy():
                return self
            if "address already in use" not in self.log().lower():
                break
        raise AssertionError(f"the server did not start; its log:\n{self.log()}")

    def _wait_healthy(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _, _ = http_request(self.port, "GET", "/healthz", timeout=5)
            except OSError:
                status = 0
            if status == 200:
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get_json(self, path: str) -> Any:
        status, _, body = http_request(self.port, "GET", path)
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(config: Path, *args: str) -> Server:
        server = Server(config, tmp_path / f"server-{len(servers)}.log", *args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------------------------
# A client that keeps sending requests


@dataclass
class Outcome:
    """One request: when it was sent and answered, and how."""

    sent: float
    received: float
    status: int | None
    version: str | None
    body: bytes = b""
    error: str = ""


@dataclass
class Load:
    """Client threads sending ``body`` until stopped (or ``max_requests`` each)."""

    port: int
    body: bytes
    threads: int = 2
    max_requests: int = 20000
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def start(self) -> Load:
        for w in self._workers:
            w.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for w in self._workers:
            w.join(WAIT_TIMEOUT)
            assert not w.is_alive(), "a client thread is stuck"
        with self._lock:
            return list(self.outcomes)

    def count(self, predicate: Callable[[Outcome], bool] = lambda o: True) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if predicate(o))

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        for _ in range(self.max_requests):
            if self._stop.is_set():
                break
            if conn is None:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=WAIT_TIMEOUT)
            sent = time.monotonic()
            try:
                conn.request(
                    "POST", PREDICT, body=self.body, headers={"Content-Type": "application/json"}
                )
                sent = time.monotonic()  # the request is out: the server owes an answer
                response = conn.getresponse()
                body = response.read()
                outcome = Outcome(
                    sent,
                    time.monotonic(),
                    response.status,
                    response.getheader("x-model-version"),
                    body,
                )
            except (OSError, http.client.HTTPException) as exc:
                outcome = Outcome(sent, time.monotonic(), None, None, error=repr(exc))
                conn.close()
                conn = None
                time.sleep(0.01)
            with self._lock:
                self.outcomes.append(outcome)
        if conn is not None:
            conn.close()


SMALL = {"instances": [{"user": 5, "hist": [1, 2, 7]}, {"user": 42, "hist": [3]}]}


def _check_small(outcome: Outcome, tables: dict[int, dict[str, np.ndarray]]) -> None:
    """A 200 whose values are exactly those of the version it names (never a mix)."""
    assert outcome.status == 200, (outcome.status, outcome.error, outcome.body[:300])
    assert outcome.version is not None
    t = tables[int(outcome.version)]
    predictions = json.loads(outcome.body)["predictions"]
    np.testing.assert_allclose(predictions[0]["user"], t["users"][5], rtol=1e-6)
    np.testing.assert_allclose(predictions[1]["user"], t["users"][42], rtol=1e-6)
    np.testing.assert_allclose(
        predictions[0]["hist"], bag(t["items"], "mean", [1, 2, 7]), rtol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# The tests


def test_reload_damaged_reload_and_sigterm_under_load(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    directory = tmp_path / "ckpts"
    tables = {1: random_tables(1), 2: random_tables(2)}
    save_version(directory, 1, tables[1])
    config = write_config(tmp_path / "serving.toml", directory, poll_interval_s=0.05)
    server = server_factory(config)
    small = json.dumps(SMALL).encode()

    status, headers, body = http_request(server.port, "POST", PREDICT, small)
    _check_small(Outcome(0, 0, status, headers.get("x-model-version"), body), tables)
    assert headers["x-model-version"] == "1"

    # 1. A new checkpoint appears while clients keep sending: nothing fails, the new values
    #    appear, and every answer is entirely one version's.
    load = Load(server.port, small).start()
    wait_for("requests before the reload", lambda: load.count() >= 20)
    save_version(directory, 2, tables[2])
    wait_for("version 2 answers", lambda: load.count(lambda o: o.version == "2") >= 20)
    outcomes = load.stop()
    for outcome in outcomes:
        _check_small(outcome, tables)
    versions = [o.version for o in outcomes]
    assert versions[0] == "1"
    assert versions[-1] == "2"
    assert {"1", "2"} == set(versions)

    # 2. A damaged checkpoint appears: refused, and version 2 keeps answering.
    load = Load(server.port, small).start()
    wait_for("requests before the damage", lambda: load.count() >= 20)
    before = load.count()
    save_damaged_version(directory, 3, random_tables(3))

    def refused() -> bool:
        statuses = server.get_json(f"/v1/models/{MODEL}")["model_version_status"]
        return any(
            s["version"] == "3" and s["status"]["error_code"] == "DATA_LOSS" for s in statuses
        )

    wait_for("the damaged version to be refused", refused)
    wait_for("requests after the refusal", lambda: load.count() >= before + 40)
    outcomes = load.stop()
    for outcome in outcomes:
        _check_small(outcome, tables)
        assert outcome.version == "2"
    status, _, text = http_request(server.port, "GET", "/metrics")
    assert status == 200
    assert metric(text.decode(), "embserve_model_reload_failures_total", reason="corrupt") == 1
    assert metric(text.decode(), "embserve_model_version") == 2
    assert "refused" in server.log()

    # 3. SIGTERM while large requests are in flight: each request sent before the signal is
    #    answered 200, then the process exits 0.
    big = json.dumps({"inputs": {"hist": [list(range(50)) * 8] * 2000}}).encode()  # 800k ids
    load = Load(server.port, big, threads=3).start()
    wait_for("large requests to be answered", lambda: load.count(lambda o: o.status == 200) >= 3)
    assert server.proc is not None
    term_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(WAIT_TIMEOUT)
    finally:
        outcomes = load.stop()
    assert code == 0, server.log()
    answered = [o for o in outcomes if o.status is not None]
    assert answered
    assert all(o.status == 200 for o in answered), [o.status for o in answered]
    sent_before = [o for o in outcomes if o.sent < term_at]
    assert all(o.status == 200 for o in sent_before), [o.error for o in sent_before if o.error]
    assert any(o.received > term_at for o in sent_before), "no request was in flight"
    want = bag(tables[2]["items"], "mean", list(range(50)) * 8)
    np.testing.assert_allclose(json.loads(answered[-1].body)["outputs"]["hist"][0], want, rtol=1e-5)
    assert "Shutting down" in server.log()


def _mapped(pid: int, path: str) -> dict[str, int] | None:
    """kB totals (Rss, Pss, Private_Clean, Private_Dirty, Shared_Clean) of ``pid``'s mappings
    of ``path``; ``None`` when it does not map it."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    totals: dict[str, int] = {}
    inside = False
    found = False
    for line in lines:
        first = line.split(maxsplit=1)[0] if line else ""
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", first):
            inside = line.rstrip().endswith(" " + path) or line.rstrip().endswith("\t" + path)
            found = found or inside
        elif inside and first.endswith(":"):
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                key = first[:-1]
                totals[key] = totals.get(key, 0) + int(parts[1])
    return totals if found else None


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_two_workers_share_one_copy_of_the_tables(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    vocab, dim = 1 << 18, 32  # a 32 MiB table, checksummed (so read) by each worker's restore
    directory = tmp_path / "big"
    table = es.TableConfig(vocab, dim, combiner="sum", name="big")
    values = np.random.default_rng(0).standard_normal((vocab, dim)).astype(np.float32)
    table.initializer = lambda shape, dtype: values
    model = es.TPUEmbeddingForServing({"f": es.FeatureConfig(table)}, optimizer=None)
    prefix = es.train.Checkpoint(embedding=model).save(str(directory / "ckpt"))
    data = os.path.realpath(f"{prefix}.data-00000-of-00001")
    config = tmp_path / "big.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [model]
            name = "{MODEL}"
            checkpoint = "{directory}"
            [[tables]]
            name = "big"
            vocabulary_size = {vocab}
            dim = {dim}
            combiner = "sum"
            [[features]]
            path = "f"
            table = "big"
            """
        )
    )
    server = server_factory(config, "--workers", "2")
    assert server.proc is not None

    def workers() -> list[int]:
        assert server.proc is not None
        return [p for p in _children(server.proc.pid) if _mapped(p, data) is not None]

    def loads() -> float:
        _, _, text = http_request(server.port, "GET", "/metrics")
        return metric(text.decode(), "embserve_model_loads_total")

    # Each worker loads the model itself (its lifespan does, before it accepts connections);
    # /metrics sums the two whichever worker answers.
    wait_for("both workers to load the model", lambda: loads() == 2)
    assert len(workers()) == 2

    # Requests are answered by either worker; the metrics sum both.
    n = 30
    ids = [0, vocab - 1, 12345]
    for _ in range(n):
        status, _, body = http_request(
            server.port, "POST", PREDICT, json.dumps({"inputs": {"f": ids}}).encode()
        )
        assert status == 200
    np.testing.assert_allclose(json.loads(body)["outputs"]["f"], values[ids], rtol=1e-6)
    _, _, text = http_request(server.port, "GET", "/metrics")
    route = "/v1/models/{name}:predict"
    assert metric(text.decode(), "embserve_requests_total", route=route, code="200") == n
    assert metric(text.decode(), "embserve_lookup_ids_total", feature="f") == n * len(ids)
    assert metric(text.decode(), "embserve_model_version") == 2  # 1 per worker (pid label)

    # Keep-alive requests are not held back by Nagle's algorithm (uvicorn binds the workers'
    # socket without TCP_NODELAY; the server sets it): with it on, every request after the
    # first on a connection waits ~40 ms for a delayed ACK, so even the fastest would.
    conn = http.client.HTTPConnection(HOST, server.port, timeout=WAIT_TIMEOUT)
    timings = []
    small = json.dumps({"inputs": {"f": [1]}}).encode()
    for _ in range(12):
        started = time.perf_counter()
        conn.request("POST", PREDICT, body=small)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        timings.append(time.perf_counter() - started)
    conn.close()
    assert min(timings[1:]) < 0.025, timings

    # The table is mapped, not copied: no private pages, and its proportional share summed
    # over the workers is one table, not two.
    table_kb = values.nbytes // 1024
    maps = [_mapped(p, data) for p in workers()]
    assert all(m is not None for m in maps)
    for m in maps:
        assert m is not None
        assert m.get("Private_Dirty", 0) == 0
        assert m.get("Rss", 0) >= table_kb * 0.9  # checksummed at restore: fully resident
    total_pss = sum(m.get("Pss", 0) for m in maps if m is not None)
    assert total_pss <= table_kb * 1.1, maps


MISSING_EXTRA = """
import argparse, sys
sys.modules["starlette"] = None  # as if the serve extra were not installed
from embserve.server.args import add_serve_arguments, run_from_args  # always importable
parser = argparse.ArgumentParser()
add_serve_arguments(parser)
code = run_from_args(parser.parse_args(["serving.toml"]))
print("exit code", code)
import embserve.server.main
"""


def test_missing_serve_extra_says_how_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MISSING_EXTRA],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT,
        cwd=tmp_path,
    )
    assert "exit code 1" in result.stdout
    assert result.stderr.startswith("embserve serve: error: ")
    assert result.returncode != 0  # the bare import raised
    assert result.stderr.count("pip install 'embserve[serve]'") == 2
    assert "ImportError" in result.stderr
    assert "starlette" in result.stderr


def test_running_in_a_thread(tmp_path: Path) -> None:
    from embserve.server.main import running

    directory = tmp_path / "ckpts"
    tables = random_tables(1)
    save_version(directory, 1, tables)
    config = write_config(tmp_path / "serving.toml", directory)
    with running(config) as url:
        port = int(url.rsplit(":", 1)[1])
        status, headers, body = http_request(port, "POST", PREDICT, json.dumps(SMALL).encode())
        _check_small(Outcome(0, 0, status, headers.get("x-model-version"), body), {1: tables})
    with pytest.raises(ConnectionRefusedError):  # shut down when the block exited
        http_request(port, "GET", "/healthz", timeout=5)


def test_sigterm_drain_is_bounded(tmp_path: Path, server_factory: Callable[..., Server]) -> None:
    """A request still in flight when SIGTERM arrives gets ``drain_timeout_s``, then is
    cancelled and the process exits 0 (the drain used to wait for it forever). The request
    here is an upload that stalls: its own deadline (body_timeout_s, 60 s) is far away."""
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    config = write_config(
        tmp_path / "serving.toml",
        directory,
        server="drain_timeout_s = 1.0\nbody_timeout_s = 60\nheader_timeout_s = 60\n",
    )
    server = server_factory(config)
    assert server.proc is not None
    with socket.create_connection((HOST, server.port), timeout=WAIT_TIMEOUT) as sock:
        sock.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
        )
        # The request is in the app, waiting for its body, once the server has answered a
        # request sent after it (the loop handles this connection's head first: it was
        # accepted first and its bytes were there before the second connection opened).
        assert http_request(server.port, "GET", "/healthz")[0] == 200
        term_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(WAIT_TIMEOUT)
        took = time.monotonic() - term_at
    assert code == 0, server.log()
    assert took < 10.0, took
    assert "timeout graceful shutdown exceeded" in server.log()


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_hostile_requests_get_4xx_with_bounded_memory(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """The review's requests against a real process: the amplification request (61 KB asking
    for 256 x 20,000 x dim floats), Unicode and 4,301-digit versions, JSON nested 960 to 10,000
    deep. Every answer is a 4xx, the process lives, and its peak RSS grows by less than 64 MiB
    (the amplification alone used to allocate 1.25 GiB at dim 64)."""
    directory = tmp_path / "ckpts"
    save_version(directory, 1, random_tables(1))
    server = server_factory(write_config(tmp_path / "serving.toml", directory))
    assert server.proc is not None
    http_request(server.port, "POST", PREDICT, json.dumps(SMALL).encode())  # warm
    rss_before, peak_before = _memory_kib(server.proc.pid)
    requests: list[tuple[str, str, bytes | None]] = [
        ("POST", PREDICT, amplification_body("hist")),
        ("POST", PREDICT, amplification_body("recent")),
        ("POST", PREDICT, amplification_body("hist", bags=200_000, batch=16)),  # 600 KB
    ]
    for version in ["%C2%B2", "%E2%91%A0", "%D9%A1", "%EF%BC%91", "9" * 4301]:
        requests.append(("POST", f"/v1/models/{MODEL}/versions/{version}:predict", b"{}"))
        requests.append(("GET", f"/v1/models/{MODEL}/versions/{version}", None))
    for depth in (960, 970, 1000, 1030, 10_000):
        deep = "[" * depth + "1" + "]" * depth
        requests.append(("POST", PREDICT, f'{{"instances": [{{"hist": {deep}}}]}}'.encode()))
    for method, path, body in requests:
        status, _, answer = http_request(server.port, method, path, body)
        assert 400 <= status < 500, (path[:80], status, answer[:300])
    rss_after, peak_after = _memory_kib(server.proc.pid)
    assert server.proc.poll() is None
    print(f"server RSS {rss_before} -> {rss_after} KiB, peak {peak_before} -> {peak_after} KiB")
    assert peak_after - rss_before < 64 << 10, (rss_before, peak_before, rss_after, peak_after)


def test_serves_a_sparsecore_checkpoint_with_the_config_inspect_writes(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """A TPUEmbeddingV2 (SparseCore) checkpoint made by TensorFlow, served the way a user
    would: ``embserve inspect --config`` writes the config, ``embserve serve`` answers from the
    stacks (issue 11)."""
    import shutil

    fixture = Path(__file__).resolve().parents[1] / "data" / "sparsecore" / "stacked_2x4"
    shutil.copytree(fixture, tmp_path / "ckpts")
    skeleton = subprocess.run(
        [sys.executable, "-m", "embserve", "inspect", str(tmp_path / "ckpts"), "--config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config = tmp_path / "serving.toml"
    config.write_text(skeleton.replace('name = "embedding"', f'name = "{MODEL}"', 1))
    server = server_factory(config)
    expected = json.loads((fixture / "expected.json").read_text())["restored"]
    body = json.dumps({"instances": [{"t_b": 36, "t_c": 49}, {"t_b": 0, "t_c": 13}]}).encode()
    status, headers, answer = http_request(server.port, "POST", PREDICT, body)
    assert status == 200, answer
    assert headers["x-model-version"] == "1"
    predictions = json.loads(answer)["predictions"]
    for name, rows in (("t_b", [36, 0]), ("t_c", [49, 13])):
        table = np.frombuffer(bytes.fromhex(expected[name]["data_hex"]), dtype="<f4")
        table = table.reshape(expected[name]["shape"])
        got = np.asarray([p[name] for p in predictions], dtype=np.float32)
        np.testing.assert_array_equal(got, table[rows], err_msg=name)
