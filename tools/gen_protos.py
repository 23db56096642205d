"""Regenerate the ``*_pb2.py`` / ``*_pb2.pyi`` modules of ``src/embserve/checkpoint/protos``.

Run from anywhere (it finds the repository from its own path)::

    python3 tools/gen_protos.py            # or: make protos
    python3 tools/gen_protos.py --check    # exit 1 if the committed files are stale (no writes)

Why a script and a throwaway venv: the generated modules are committed so that neither users nor
CI ever need ``protoc``. To regenerate them, this script creates ``.venvs/protoc`` (gitignored)
with ``grpcio-tools`` pinned to :data:`GRPCIO_TOOLS`, whose bundled ``protoc`` produces code
for the protobuf runtime embserve supports, and runs it over every ``.proto`` in the package.

Compatibility rule (protobuf's ``runtime_version`` check, protobuf 7.x): generated code records
the protoc version it came from and refuses to load on an *older* runtime; a newer runtime of the
same major is fine. ``grpcio-tools`` 1.85.1 bundles libprotoc 35.1, i.e. gencode 7.35.1, so the
runtime requirement is ``protobuf>=7.35.1,<8``. Bumping :data:`GRPCIO_TOOLS` raises that floor:
update ``pyproject.toml`` together with it.

The ``.proto`` files are compiled with ``src/`` as the include root, so their descriptor names are
``embserve/checkpoint/protos/<name>.proto`` and their package is ``embserve.ckpt``: nothing can
collide with TensorFlow's own descriptors when both live in one process.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GRPCIO_TOOLS = "1.85.1"  # bundles libprotoc 35.1 -> gencode 7.35.1

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO_DIR = SRC / "embserve" / "checkpoint" / "protos"
VENV = ROOT / ".venvs" / "protoc"


def _venv_python() -> Path:
    """Create (once) the protoc venv and return its interpreter."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import grpc_tools, importlib.metadata as m; print(m.version('grpcio-tools'))",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip() != GRPCIO_TOOLS:
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"grpcio-tools=={GRPCIO_TOOLS}",
            ],
            check=True,
        )
    return python


def _generate(python: Path, out_dir: Path) -> list[Path]:
    """Run protoc over every .proto into ``out_dir`` (mirroring the package path)."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    subprocess.run(
        [
            str(python),
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={SRC}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            *(str(p.relative_to(SRC)) for p in protos),
        ],
        check=True,
        cwd=SRC,
    )
    rel = PROTO_DIR.relative_to(SRC)
    return sorted((out_dir / rel).glob("*_pb2.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)

    python = _venv_python()
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(python, Path(tmp))
        stale = []
        for path in generated:
            target = PROTO_DIR / path.name
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                stale.append(target)
                if not args.check:
                    shutil.copyfile(path, target)
    for target in stale:
        print(("stale: " if args.check else "wrote: ") + str(target.relative_to(ROOT)))
    if not stale:
        print("generated protobuf modules are up to date")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
