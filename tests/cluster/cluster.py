"""A local cluster as deploy/cluster.toml describes it: N `coordd serve` processes on one fresh
PostgreSQL database, optionally a private redis-server, and nginx (grpc_pass) in front, every
one a child process of the test with its files under the test's tmp dir."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc

from coordd_client.v1 import status_pb2, status_pb2_grpc
from tests.support.process import FAST_KDF_ENV, Daemon

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _load_render() -> Any:
    spec = importlib.util.spec_from_file_location("coordd_deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()
LAYOUT = render.load()
# Short lease so failover tests take seconds, not tens of seconds.
LEASE_S = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1) -> T:
    """Polls `check` until it returns something truthy (returned); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the condition may raise while the cluster settles
            last_error = exc
        time.sleep(every)
    raise AssertionError(
        f"timed out waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def bearer(token: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra.items())


class Nginx:
    """nginx from deploy/nginx.conf.template, unprivileged paths, on a free 127.0.0.1 port."""

    def __init__(self, upstream_ports: list[int]) -> None:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise AssertionError("nginx is not installed (apt-get install -y nginx-light)")
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        # Not under pytest's 0700 tmp tree: when the test runs as root, nginx's workers run as
        # nobody and must reach their temp dirs.
        self.dir = Path(tempfile.mkdtemp(prefix="coordd-nginx-"))
        self.dir.chmod(0o755)
        (self.dir / "temp").mkdir(mode=0o755)
        self.upstream_ports = upstream_ports
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def conf(self, port: int) -> str:
        return render.nginx_conf(
            listen=f"127.0.0.1:{port}",
            upstreams=[f"127.0.0.1:{p}" for p in self.upstream_ports],
            pid=str(self.dir / "nginx.pid"),
            error_log=str(self.dir / "error.log"),
            access_log="off",
            temp=str(self.dir / "temp"),
            worker_processes="1",
        )

    def start(self) -> Nginx:
        for _ in range(5):  # the free port may be taken before nginx binds it
            port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self.conf(port))
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=open(self.dir / "stderr.log", "ab"),  # noqa: SIM115 - lives as long as nginx
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        self.port = port
                        return self
                time.sleep(0.05)
            self.stop()
        raise AssertionError(f"nginx did not start:\n{self.log()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in (self.dir / "error.log", self.dir / "stderr.log")
            if p.exists()
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finishes what is in flight
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A private redis-server on a free port, so a test may stop and restart it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        wait_for("redis-server", lambda: client.ping(), timeout=10)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Cluster:
    """deploy/cluster.toml's replicas (and proxy) as local processes."""

    def __init__(
        self, base: Path, database_url: str, redis_url: str = "", *, extra_env: dict[str, str] | None = None
    ):
        self.base = base
        self.database_url = database_url
        self.redis_url = redis_url
        self.keys = base / "keys"
        self.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.jwt_secret = secrets.token_urlsafe(48)
        self.redis_prefix = f"coordd-cluster-{secrets.token_hex(5)}"
        self.extra_env = extra_env or {}
        self.names = render.replica_names(LAYOUT)
        self.replicas: list[Daemon] = []
        self.nginx: Nginx | None = None
        self.admin_key = ""
        self._channels: dict[str, grpc.Channel] = {}

    def env(self) -> dict[str, str]:
        """Each replica's environment: every shared setting of cluster.toml, with local values."""
        shared = render.shared_env(
            LAYOUT,
            {
                "COORDD_DATABASE_URL": self.database_url,
                "COORDD_REDIS_URL": self.redis_url,
                "COORDD_REDIS_PREFIX": self.redis_prefix,
                "COORDD_JWT_SECRET": self.jwt_secret,
                "COORDD_SIGNING_KEY_PATH": str(self.keys / "coordinator.key"),
                "COORDD_SEALING_KEY_PATH": str(self.keys / "secrets.key"),
            },
        )
        return {**shared, "COORDD_SCHEDULER_LEASE_S": str(LEASE_S), **self.extra_env}

    def create_admin(self) -> str:
        """`coordd admin create-user --database-url`, as an operator bootstraps (it also migrates)."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "coordd",
                "admin",
                "create-user",
                "--database-url",
                self.database_url,
                "--data-dir",
                str(self.base / "admin-data"),
                "--email",
                "root@cluster.example",
                "--role",
                "admin",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}, **FAST_KDF_ENV},
        )
        assert out.returncode == 0, out.stderr
        self.admin_key = str(json.loads(out.stdout)["api_key_secret"])
        return self.admin_key

    def start(self, *, proxy: bool = True, replica_args: dict[int, tuple[str, ...]] | None = None) -> Cluster:
        """`replica_args`: extra `coordd serve` arguments by replica index (e.g. --processes)."""
        self.create_admin()
        self.replicas = [self._spawn(i, *(replica_args or {}).get(i, ())) for i in range(len(self.names))]
        for replica in self.replicas:
            replica.wait_ready(60)
        if proxy:
            self.nginx = Nginx([r.port for r in self.replicas]).start()
        return self

    def _spawn(self, index: int, *args: str) -> Daemon:
        return Daemon(self.base / self.names[index], *args, env=self.env())

    def restart(self, index: int, *args: str) -> Daemon:
        """Starts replica `index` again on its old port (nginx keeps its upstream list)."""
        old = self.replicas[index]
        old.stop()
        self._channels.pop(old.target, None)
        # The later --listen wins over the Daemon helper's 127.0.0.1:0.
        replica = self._spawn(index, "--listen", old.target, *args)
        self.replicas[index] = replica.wait_ready(60)
        return replica

    # -- calls ------------------------------------------------------------------------------

    def channel(self, target: str) -> grpc.Channel:
        if target not in self._channels:
            self._channels[target] = grpc.insecure_channel(target)
        return self._channels[target]

    @property
    def front(self) -> grpc.Channel:
        assert self.nginx is not None
        return self.channel(self.nginx.target)

    def status(self, replica: Daemon, timeout: float = 5) -> status_pb2.GetStatusResponse:
        stub = status_pb2_grpc.StatusServiceStub(self.channel(replica.target))
        return stub.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(self.admin_key), timeout=timeout)

    def alive(self) -> list[Daemon]:
        return [r for r in self.replicas if r.proc.poll() is None]

    def leader(self, among: list[Daemon] | None = None, timeout: float = 30) -> Daemon:
        """The one replica whose GetStatus says it leads, once every replica named in `among`
        (default: the live ones) names that same leader."""
        candidates = among if among is not None else self.alive()

        def agreed() -> Daemon | None:
            statuses = {r.target: self.status(r) for r in candidates}
            leaders = [r for r in candidates if statuses[r.target].scheduler.is_leader]
            if len(leaders) != 1:
                return None
            named = {s.scheduler.leader_instance_id for s in statuses.values()}
            if named != {statuses[leaders[0].target].instance_id}:
                return None
            return leaders[0]

        return wait_for("one agreed scheduler leader", agreed, timeout=timeout)

    def rpc_counts(self, method: str) -> list[int]:
        """How many `method` calls each replica logged (its `rpc` lines)."""
        counts = []
        for replica in self.replicas:
            counts.append(
                sum(
                    1
                    for line in replica.log().splitlines()
                    if f'"method": "{method}"' in line or f'"method":"{method}"' in line
                )
            )
        return counts

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self.nginx is not None:
            self.nginx.close()
        for replica in self.replicas:
            if replica.proc.poll() is None:
                # A SIGSTOPped replica must be continued before it can die cleanly.
                os.kill(replica.proc.pid, signal.SIGCONT)
            replica.stop()


@contextmanager
def running_cluster(
    base: Path,
    database_url: str,
    redis_url: str = "",
    replica_args: dict[int, tuple[str, ...]] | None = None,
    **kwargs: Any,
) -> Iterator[Cluster]:
    cluster = Cluster(base, database_url, redis_url, **kwargs)
    try:
        yield cluster.start(replica_args=replica_args)
    finally:
        cluster.close()


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 1)
