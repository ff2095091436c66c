"""docker-compose.yml, deploy/nginx.conf and this test's processes come from one description,
deploy/cluster.toml (there is no container engine here to run compose itself)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.cluster import LAYOUT, ROOT, Cluster, Nginx, render


def test_compose_and_nginx_conf_are_exactly_what_render_makes_of_the_cluster_layout():
    assert (ROOT / "docker-compose.yml").read_text() == render.compose(LAYOUT), (
        "docker-compose.yml drifted from deploy/cluster.toml: run python3 deploy/render.py"
    )
    assert (ROOT / "deploy" / "nginx.conf").read_text() == render.compose_nginx_conf(LAYOUT), (
        "deploy/nginx.conf drifted from deploy/nginx.conf.template: run python3 deploy/render.py"
    )
    assert render.main(["--check"]) == 0


def test_compose_requires_the_jwt_secret_and_the_database_password_and_ships_no_default_secret():
    compose = (ROOT / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{(COORDD_JWT_SECRET|POSTGRES_PASSWORD)([^}]*)\}", compose)
    assert {name for name, _ in uses} == {"COORDD_JWT_SECRET", "POSTGRES_PASSWORD"}
    for name, rest in uses:
        assert rest.startswith(":?"), f"${{{name}{rest}}} must be required (:?), never defaulted"
    # No `${VAR:-default}` / `${VAR-default}` anywhere, and no literal secret value.
    assert not re.search(r"\$\{\w+:?-", compose)
    assert 'COORDD_JWT_SECRET: "${COORDD_JWT_SECRET:?' in compose
    assert "change-me" not in compose and "POSTGRES_PASSWORD: coordd" not in compose


def test_compose_runs_postgres_redis_every_replica_with_a_health_check_and_nginx_in_front():
    compose = (ROOT / "docker-compose.yml").read_text()
    names = render.replica_names(LAYOUT)
    assert len(names) == LAYOUT["cluster"]["replicas"] == 3
    services = re.findall(
        r"^  ([\w-]+):$", compose.split("\nservices:\n", 1)[1].split("\nvolumes:\n")[0], re.M
    )
    assert services == ["postgres", "redis", *names, "proxy"]
    # The replicas' shared anchor has a gRPC health check; nginx waits for every replica to be healthy.
    anchor = compose.split("services:")[0]
    assert "grpc_health.v1" in anchor and "healthcheck:" in anchor
    proxy = compose.split("  proxy:\n", 1)[1].split("\nvolumes:\n")[0]
    for name in names:
        assert f"      {name}:\n        condition: service_healthy" in proxy
    assert "healthcheck:" in proxy and "/healthz" in proxy
    # Only the proxy publishes the gRPC port.
    port = LAYOUT["cluster"]["proxy_port"]
    assert compose.count(f'"{port}:{port}"') == 1 and f'"{port}:{port}"' in proxy
    # Every shared setting reaches every replica (one anchor, merged into each).
    for setting in LAYOUT["shared"]:
        assert f"    {setting}: " in anchor
    assert compose.count("<<: *coordd") == len(names)


def test_nginx_conf_passes_grpc_to_every_replica_of_the_layout():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    port = LAYOUT["cluster"]["grpc_port"]
    upstream = conf.split("upstream coordd {", 1)[1].split("}", 1)[0]
    assert re.findall(r"server ([\w.-]+:\d+)", upstream) == [
        f"{n}:{port}" for n in render.replica_names(LAYOUT)
    ]
    assert "grpc_pass grpc://coordd;" in conf
    assert f"listen {LAYOUT['cluster']['proxy_port']} http2;" in conf


def test_the_cluster_test_starts_the_layout_with_every_shared_setting(tmp_path: Path):
    cluster = Cluster(tmp_path, "postgresql://postgres@127.0.0.1:5432/x", "redis://127.0.0.1:6379/0")
    assert cluster.names == render.replica_names(LAYOUT)
    env = cluster.env()
    assert set(LAYOUT["shared"]) <= set(env)
    # Without Redis the one optional shared setting is left out, nothing else.
    no_redis = Cluster(tmp_path / "b", "postgresql://postgres@127.0.0.1:5432/x").env()
    assert set(LAYOUT["shared"]) - set(no_redis) == {"COORDD_REDIS_URL"}
    # The local nginx is the same template with local ports and paths.
    nginx = Nginx([1111, 2222, 3333])
    try:
        local = nginx.conf(4444)
    finally:
        nginx.close()
    shipped = (ROOT / "deploy" / "nginx.conf").read_text()
    strip = re.compile(
        r"^\s*(server \S+ max_fails|listen |pid |error_log |access_log |worker_processes |\w+_temp_path ).*$",
        re.M,
    )
    assert strip.sub("", local) == strip.sub("", shipped)
    with pytest.raises(KeyError, match="COORDD_JWT_SECRET"):
        render.shared_env(LAYOUT, {k: "x" for k in LAYOUT["shared"] if k != "COORDD_JWT_SECRET"})
