"""Black-box probe of a real ``embserve serve`` process with hostile inputs (issue 10).

Starts the server on the bundled demo model in a subprocess, sends it what an outside review
used to knock it over, and prints one markdown row per probe: the HTTP statuses, the time, and
the server's resident memory (``VmRSS``) and peak (``VmHWM``) from ``/proc`` before and after.
The server must survive every probe (its pid alive, ``/healthz`` answering) with no 5xx other
than a 503 while a version is withdrawn::

    .venv/bin/python tools/probe_server.py                 # all probes
    .venv/bin/python tools/probe_server.py --only slow     # one probe
    PYTHONPATH=/tmp/old/src .venv/bin/python tools/probe_server.py   # another checkout's code

Probes: ``amplification`` (256 examples, one with 20,000 empty bags: 61 KB in), ``versions``
(Unicode-digit and 4,301-digit versions), ``nesting`` (JSON nested 960 .. 10,000 deep),
``weights`` (finite weights whose products overflow float32), ``sequence-ids`` (``{"ids": ...}``
without weights for a sequence feature), ``slow`` (60 connections that send half a request and
stall), ``truncate`` (the served data shard truncated in place, as ``cp`` / ``rsync --inplace``
onto a served checkpoint do, then requests, then a good checkpoint published).

Linux only (``/proc``). Uses the standard library and embserve (to write the checkpoints).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import embserve as es
from embserve.demo import write_demo_files


def _mem(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in MiB; (-1, -1) when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return -1, -1
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def _open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Server:
    """``python -m embserve.server.main CONFIG`` on a free port, with its pid."""

    def __init__(self, config: str, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "embserve.server.main",
                config,
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(config + ".log", "wb"),  # noqa: SIM115 - lives as long as the process
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} at start")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 60
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Probes: each returns (what was sent, statuses / outcome)

PREDICT = "/v1/models/demo:predict"


def _statuses(server: Server, requests: list[tuple[str, str, bytes | None]]) -> str:
    out = []
    for method, path, body in requests:
        try:
            status, raw = server.request(method, path, body)
            out.append(f"{status} ({len(raw):,} B)" if len(raw) > 10_000 else str(status))
        except OSError as exc:
            out.append(f"{type(exc).__name__}")
    return ", ".join(out)


def probe_amplification(server: Server, work: str) -> tuple[str, str]:
    instances: list[dict[str, Any]] = [{"watched_items": [[1]]} for _ in range(256)]
    instances[0] = {"watched_items": [[] for _ in range(20_000)]}
    body = json.dumps({"instances": instances}, separators=(",", ":")).encode()
    return f"{len(body):,} B body", _statuses(server, [("POST", PREDICT, body)])


def probe_versions(server: Server, work: str) -> tuple[str, str]:
    paths = [
        "/v1/models/demo/versions/%C2%B2:predict",
        "/v1/models/demo/versions/%E2%91%A0:predict",
        "/v1/models/demo/versions/%D9%A1:predict",
        "/v1/models/demo/versions/%EF%BC%91:predict",
        "/v1/models/demo/versions/" + "9" * 4301 + ":predict",
        "/v1/models/demo/versions/%C2%B2",
        "/v1/models/demo/versions/%C2%B2/metadata",
    ]
    body = b'{"instances": [{"user_id": 1}]}'
    reqs: list[tuple[str, str, bytes | None]] = [
        ("POST" if p.endswith(":predict") else "GET", p, body if p.endswith(":predict") else None)
        for p in paths
    ]
    return "² ① ١ １ 4301 digits (predict, status, metadata)", _statuses(server, reqs)


def probe_nesting(server: Server, work: str) -> tuple[str, str]:
    reqs: list[tuple[str, str, bytes | None]] = []
    for depth in (960, 970, 1000, 1030, 10_000):
        inner = "[" * depth + "1" + "]" * depth
        reqs.append(("POST", PREDICT, f'{{"instances": [{{"user_id": {inner}}}]}}'.encode()))
    return "depth 960, 970, 1000, 1030, 10000", _statuses(server, reqs)


def probe_weights(server: Server, work: str) -> tuple[str, str]:
    bodies = [
        {"instances": [{"liked_categories": {"ids": [1], "weights": [3.4e38]}}]},
        {"instances": [{"liked_categories": {"ids": [1, 2], "weights": [1e30, 1.0]}}]},
        {"instances": [{"watched_items": {"ids": [1, 2], "weights": [3e38, 3e38]}}]},
    ]
    reqs: list[tuple[str, str, bytes | None]] = [
        ("POST", PREDICT, json.dumps(b).encode()) for b in bodies
    ]
    results = []
    for method, path, body in reqs:
        status, raw = server.request(method, path, body)
        results.append(f"{status}{' null in JSON' if b'null' in raw else ''}")
    return "[3.4e38] sqrtn; [1e30, 1] sqrtn; [3e38, 3e38] mean", ", ".join(results)


def probe_sequence_ids(server: Server, work: str) -> tuple[str, str]:
    body = json.dumps({"instances": [{"recent_items": {"ids": [1, 2]}}]}).encode()
    status, raw = server.request("POST", PREDICT, body)
    return '{"recent_items": {"ids": [1, 2]}}', f"{status} {raw[:80].decode(errors='replace')}"


def probe_slow(server: Server, work: str, wait_s: float) -> tuple[str, str]:
    socks = []
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i % 2:
            s.sendall(b"POST /v1/models/demo:predict HTTP/1.1\r\nHost: x\r\n")  # headers unfinished
        else:
            s.sendall(
                b"POST /v1/models/demo:predict HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"instan'
            )
        socks.append(s)
    time.sleep(wait_s)
    closed = 0
    for s in socks:
        s.settimeout(0.2)
        try:
            data = s.recv(4096)
            closed += 1 if data == b"" or data.startswith(b"HTTP/1.1 4") else 0
        except TimeoutError:
            pass
        except OSError:
            closed += 1
    # a fresh client still gets an answer
    status, _ = server.request("GET", "/healthz", timeout=10)
    for s in socks:
        s.close()
    return (
        f"60 half-sent requests, then {wait_s:.0f} s",
        f"{closed}/60 closed by the server; a new client got {status}",
    )


def probe_truncate(server: Server, work: str, prefix: str) -> tuple[str, str]:
    shard = prefix + ".data-00000-of-00001"
    body = json.dumps({"instances": [{"user_id": 999, "watched_items": [4999]}]}).encode()
    outcome = []
    before = server.request("POST", PREDICT, body)[0]
    outcome.append(f"before {before}")
    # 1. coreutils truncate (opens with O_NONBLOCK)
    t = subprocess.run(["truncate", "-s", "1000", shard], capture_output=True, text=True)
    outcome.append(f"`truncate` exit {t.returncode}")
    time.sleep(0.5)
    statuses = _statuses(server, [("POST", PREDICT, body)] * 3)
    outcome.append(f"then {statuses}; alive={server.alive()}")
    if not server.alive():
        return "truncate -s 1000 on the served shard", "; ".join(outcome)
    # 2. a blocking writer (Python open r+b, truncate), as cp / rsync --inplace open
    writer = subprocess.Popen(
        [sys.executable, "-c", f"open({shard!r}, 'r+b').truncate(1000)"],
    )
    started = time.monotonic()
    codes = []
    while writer.poll() is None and time.monotonic() - started < 60:
        try:
            codes.append(server.request("POST", PREDICT, body, timeout=10)[0])
        except OSError as exc:
            codes.append(type(exc).__name__)  # type: ignore[arg-type]
        time.sleep(0.05)
    writer.wait(60)
    blocked = time.monotonic() - started
    after = _statuses(server, [("POST", PREDICT, body)] * 3)
    outcome.append(
        f"blocking writer done in {blocked:.2f} s (codes seen {sorted(set(map(str, codes)))}); "
        f"then {after}; alive={server.alive()}"
    )
    if server.alive():
        # 3. publish a good checkpoint the safe way: new files, state file last
        from embserve.demo import build_demo_model

        model, _ = build_demo_model(seed=1)
        ckpt = es.train.Checkpoint(embedding=model)
        ckpt.save_counter = 1
        ckpt.save(os.path.join(os.path.dirname(prefix), "ckpt"))
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            status = server.request("POST", PREDICT, body)[0]
            if status == 200:
                break
            time.sleep(0.2)
        outcome.append(f"new version published: {status}")
    return "the served shard truncated in place, then a new version", "; ".join(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run one probe (by name)")
    parser.add_argument(
        "--slow-wait",
        type=float,
        default=25.0,
        help="seconds the stalled connections wait before counting (default 25: past the "
        "server's 20 s body timeout and the sweep that enforces it)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="embserve-probe-") as work:
        files = write_demo_files(work)
        config = Path(files.config)
        config.write_text(
            config.read_text("utf-8").replace("poll_interval_s = 60.0", "poll_interval_s = 0.2"),
            "utf-8",
        )
        server = Server(files.config, _free_port())
        probes: list[tuple[str, Callable[[], tuple[str, str]]]] = [
            ("amplification", lambda: probe_amplification(server, work)),
            ("versions", lambda: probe_versions(server, work)),
            ("nesting", lambda: probe_nesting(server, work)),
            ("weights", lambda: probe_weights(server, work)),
            ("sequence-ids", lambda: probe_sequence_ids(server, work)),
            ("slow", lambda: probe_slow(server, work, args.slow_wait)),
            ("truncate", lambda: probe_truncate(server, work, files.checkpoint)),
        ]
        print(f"server pid {server.proc.pid}, code from {os.path.dirname(es.__file__)}")
        print("| probe | sent | answers | RSS MiB before → after (peak) | fds | alive |")
        print("| --- | --- | --- | --- | --- | --- |")
        failed = False
        try:
            for name, probe in probes:
                if args.only and name != args.only:
                    continue
                rss0, _ = _mem(server.proc.pid)
                started = time.monotonic()
                try:
                    sent, answers = probe()
                except Exception as exc:  # a probe that breaks is a finding, not a crash here
                    sent, answers = "-", f"probe failed: {type(exc).__name__}: {exc}"
                took = time.monotonic() - started
                rss1, peak = _mem(server.proc.pid)
                alive = server.alive()
                failed |= not alive
                state = alive if alive else server.proc.returncode
                fds = _open_fds(server.proc.pid)
                print(
                    f"| {name} | {sent} | {answers} ({took:.1f} s) | {rss0} → {rss1} ({peak}) "
                    f"| {fds} | {state} |"
                )
                sys.stdout.flush()
                if not alive:
                    break
        finally:
            code = server.stop()
            log = Path(files.config + ".log").read_text("utf-8", errors="replace")
            print(f"\nserver exit code {code}; last log lines:")
            print("\n".join(log.strip().splitlines()[-8:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
