"""``embserve serve``'s arguments and exit codes (without starting a server)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from embserve.server.args import add_serve_arguments, run_from_args
from embserve.server.main import main, set_tcp_nodelay


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = _parse("serving.toml")
    assert (args.config, args.host, args.port, args.workers) == (
        "serving.toml",
        "127.0.0.1",
        8500,
        1,
    )
    assert (args.log_level, args.checkpoint, args.model_name, args.no_access_log) == (
        "info",
        None,
        None,
        False,
    )
    args = _parse(
        "m:fc", "--port", "9000", "--workers", "3", "--checkpoint", "c", "--model-name", "x"
    )
    assert (args.port, args.workers, args.checkpoint, args.model_name) == (9000, 3, "c", "x")


def test_bad_config_exits_1_with_key_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serving.toml"
    config.write_text('[model]\nname = "m"\ncheckpoint = "c"\n\n[[tables]]\nname = "t"\n')
    assert main([str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embserve serve: error: serving config ")
    assert "line 5" in err
    assert "tables[0] ('t')" in err
    assert "vocabulary_size" in err
    assert err.count("\n") == 1


def test_missing_config_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["/nonexistent.toml"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_bad_workers_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_from_args(_parse("serving.toml", "--workers", "0")) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


def test_tcp_nodelay_on_sockets_uvicorn_binds_with_proto_0() -> None:
    # uvicorn's Config.bind_socket() (the --workers path) creates sockets like this one, and
    # asyncio only sets TCP_NODELAY itself when proto is IPPROTO_TCP.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.proto == 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_tcp_nodelay(_Transport(sock))  # type: ignore[arg-type]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    set_tcp_nodelay(_Transport(None))  # type: ignore[arg-type]  # not a socket: nothing to do


def test_http_protocol_carries_the_limits_to_spawned_workers() -> None:
    """uvicorn pickles its Config (with the ``http`` protocol factory) into each spawned worker
    process: the factory must survive that with the configured limits."""
    import pickle

    from embserve.server.config import ServerOptions
    from embserve.server.main import ConnectionLimits, NoDelayHTTPProtocol, http_protocol

    factory = pickle.loads(pickle.dumps(http_protocol(ServerOptions(header_timeout_s=3.5))))
    assert factory.func is NoDelayHTTPProtocol
    limits = ConnectionLimits(header_timeout_s=3.5, max_connections=1000, write_timeout_s=20.0)
    assert factory.keywords == {"connection_limits": limits}
