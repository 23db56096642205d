"""``embserve serve``'s command-line arguments, importable without the ``serve`` extra.

The ``embserve`` CLI builds its parser from :func:`add_serve_arguments` whether or not
starlette and uvicorn are installed (so ``embserve --help`` always works), and runs
:func:`run_from_args`, which imports the server only then: without the extra it prints
``pip install 'embserve[serve]'`` and returns 1. Nothing here imports beyond the standard
library at module level (not even numba, which ``embserve --help`` should not wait for).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_serve_arguments", "run_from_args"]

PROG = "embserve serve"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``embserve serve``'s arguments to ``parser`` (the CLI's ``serve`` subcommand)."""
    parser.add_argument(
        "config",
        metavar="CONFIG",
        help="a serving config (TOML), or package.module:attr naming a feature_config structure",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8500, help="TCP port (8500)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, sharing the memory-mapped tables (1)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (info)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="checkpoint directory or prefix; overrides the config's [model] checkpoint",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="model name in URLs; overrides the config's [model] name",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not log a line per request"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve with parsed :func:`add_serve_arguments` arguments until SIGTERM; the exit code.

    0 after a clean shutdown; 1 for a config that cannot be served or a missing ``serve``
    extra (one line on stderr, no traceback); 2 for bad arguments; 3 when uvicorn cannot start.
    """
    if args.workers < 1:
        sys.stderr.write(f"{PROG}: error: --workers must be >= 1, got {args.workers}\n")
        return 2
    try:
        from embserve.server.main import serve
    except ImportError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    from embserve.server.config import ServingConfigError

    try:
        serve(
            args.config,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            checkpoint=args.checkpoint,
            model_name=args.model_name,
            access_log=not args.no_access_log,
        )
    except ServingConfigError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except SystemExit as exc:  # uvicorn could not start (3)
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 0
    return 0
