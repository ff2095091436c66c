"""What every coordctl command shares: the saved config, the client, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from coordd_client.client import Client, ResumedStream, connect, resume_stream
from coordd_client.errors import CoorddError

DEFAULT_TARGET = "127.0.0.1:50051"

# Global TLS flags: (flag, environment variable, connect() argument, help).
TLS_FLAGS = (
    ("--tls-ca", "COORDCTL_TLS_CA", "ca_file", "PEM file of the CA that signed coordd's certificate"),
    ("--tls-cert", "COORDCTL_TLS_CERT", "cert_file", "this client's PEM certificate, for mutual TLS"),
    ("--tls-key", "COORDCTL_TLS_KEY", "key_file", "this client's PEM private key, for mutual TLS"),
    ("--tls-server-name", "COORDCTL_TLS_SERVER_NAME", "server_name", "name coordd's certificate must carry"),
)


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """TLS flags every command shares; each defaults to its COORDCTL_* variable."""
    parser.add_argument(
        "--tls",
        action="store_true",
        help="use TLS with the system's CA roots (implied by any --tls-* flag; env COORDCTL_TLS=1)",
    )
    for flag, env, _, text in TLS_FLAGS:
        parser.add_argument(flag, help=f"{text}; implies TLS (env {env})")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "coordctl" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(data: dict[str, Any]) -> Path:
    """Writes atomically with mode 0600: the file holds a bearer token."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


@dataclass
class Context:
    target: str
    token: str | None
    api_key: str | None
    as_json: bool
    timeout: float
    config: dict[str, Any] = field(default_factory=dict)
    # connect() keyword arguments for TLS (empty: plaintext).
    tls: dict[str, Any] = field(default_factory=dict)
    _client: Client | None = None

    @staticmethod
    def from_args(args: argparse.Namespace) -> Context:
        config = load_config()
        api_key = args.api_key or os.environ.get("COORDCTL_API_KEY")
        token = args.token or os.environ.get("COORDCTL_TOKEN")
        if not api_key and not token:
            token = config.get("token")
        tls: dict[str, Any] = {}
        for flag, env, key, _ in TLS_FLAGS:
            value = getattr(args, flag[2:].replace("-", "_"), None) or os.environ.get(env)
            if value:
                tls[key] = value
        if getattr(args, "tls", False) or _truthy(os.environ.get("COORDCTL_TLS")):
            tls["tls"] = True
        return Context(
            target=args.target or os.environ.get("COORDCTL_TARGET") or config.get("target") or DEFAULT_TARGET,
            token=token,
            api_key=api_key,
            as_json=args.json,
            timeout=args.timeout,
            config=config,
            tls=tls,
        )

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.connect(token=self.token, api_key=self.api_key, timeout=self.timeout)
        return self._client

    def connect(self, **kwargs: Any) -> Client:
        """A client for the target with this invocation's TLS settings."""
        return connect(self.target, **self.tls, **kwargs)

    def anonymous_client(self) -> Client:
        return self.connect(timeout=self.timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def tty(self) -> bool:
        return sys.stdout.isatty() and not self.as_json


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def emit(ctx: Context, data: Any, human: str | None = None) -> None:
    """JSON with --json, otherwise the human text."""
    if ctx.as_json:
        print(json.dumps(to_dict(data) if isinstance(data, Message) else data, indent=2, sort_keys=True))
    elif human is not None:
        print(human)


def table(ctx: Context, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on a terminal; tab-separated lines otherwise (easy to cut/awk)."""
    if ctx.tty:
        from rich.console import Console
        from rich.table import Table

        out = Table(title=title)
        for column in columns:
            out.add_column(column)
        for row in rows:
            out.add_row(*[str(v) for v in row])
        Console().print(out)
    else:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(str(v) for v in row))


def fail(ctx: Context, exc: CoorddError) -> int:
    if ctx.as_json:
        print(
            json.dumps(
                {
                    "error": {
                        "code": exc.status_code.name,
                        "message": exc.message,
                        "reason": exc.reason,
                        "violations": exc.violations,
                        "request_id": exc.request_id,
                    }
                }
            )
        )
    else:
        print(f"error: {exc.status_code.name}: {exc.message}", file=sys.stderr)
        for path, problem in exc.violations.items():
            print(f"  {path}: {problem}", file=sys.stderr)
    return 1


def watch(ctx: Context, call_factory: Any, attempts: int | None = 30) -> ResumedStream:
    """A Watch* stream that survives a daemon restart or a proxy reset (resume_stream); each
    re-open is noted on stderr (a JSON line with --json), stdout stays the stream's output."""

    def note(error: CoorddError, delay: float) -> None:
        if ctx.as_json:
            line = {"event": "stream lost; reconnecting", "code": error.status_code.name, "retry_in_s": delay}
            print(json.dumps(line), file=sys.stderr, flush=True)
        else:
            print(f"stream lost ({error}); reconnecting in {delay:.1f}s", file=sys.stderr, flush=True)

    return resume_stream(call_factory, attempts=attempts, on_resume=note)


def resource_name(collection: str, text: str) -> str:
    """Accepts `jobs/abc` or just `abc` on the command line."""
    return text if text.startswith(f"{collection}/") else f"{collection}/{text}"


def enum_word(enum: Any, value: int) -> str:
    """`JOB_STATE_SUCCEEDED` -> `succeeded`: the enum's own prefix (its type name) dropped."""
    name = enum.Name(value)
    prefix = "".join("_" + c if c.isupper() else c.upper() for c in enum.DESCRIPTOR.name).lstrip("_") + "_"
    return name.removeprefix(prefix).lower()


def json_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--json` after the subcommand too (`coordctl job list --json`); SUPPRESS keeps the
    global flag's value when it is not given here."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    return parser
