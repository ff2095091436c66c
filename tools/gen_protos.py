"""Regenerate clients/coordd_client/v1 from protos/ (run by `make protos`).

Generated modules live in the `coordd_client` package, not in a top-level `coordd`
package (that name is the daemon's), so their `coordd.v1` imports are rewritten.
The descriptors keep their `coordd/v1/*.proto` file names, which reflection shows.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "clients" / "coordd_client" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")

_IMPORT_PATTERNS = [
    (re.compile(r"^from coordd\.v1 import ", re.M), "from coordd_client.v1 import "),
    (re.compile(r"^import coordd\.v1\.(\w+)", re.M), r"import coordd_client.v1.\1"),
    (re.compile(r"\bcoordd\.v1\.(\w+_pb2)\b"), r"coordd_client.v1.\1"),
]


def _rewrite(text: str) -> str:
    for pattern, replacement in _IMPORT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def main() -> int:
    # protoc finds the mypy plugins on PATH; they sit beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        generated = Path(tmp) / "coordd" / "v1"
        OUT.mkdir(parents=True, exist_ok=True)
        for old in OUT.iterdir():
            if old.name.endswith(GENERATED_SUFFIXES):
                old.unlink()
        for path in sorted(generated.iterdir()):
            if path.name.endswith(GENERATED_SUFFIXES):
                (OUT / path.name).write_text(_rewrite(path.read_text()))
        init = OUT / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated coordd.v1 messages and stubs (make protos)."""\n')
    shutil.rmtree(ROOT / "clients" / "coordd_client" / "v1" / "__pycache__", ignore_errors=True)
    print(f"generated {len(protos)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
