"""Settings: defaults < TOML file < COORDD_* environment < explicit overrides."""

from __future__ import annotations

import pytest

from coordd.config import ConfigError, load_settings
from coordd.core.ids import is_id, new_id


def test_layers_in_order(tmp_path):
    config = tmp_path / "coordd.toml"
    config.write_text('listen = "0.0.0.0:6000"\nmetrics_port = 9100\nlog_level = "debug"\n')
    settings = load_settings(str(config), env={"COORDD_METRICS_PORT": "9200"}, log_level=None)
    assert settings.listen == "0.0.0.0:6000"  # file over default
    assert settings.metrics_port == 9200  # env over file
    assert settings.log_level == "debug"
    assert load_settings(str(config), env={}, listen="127.0.0.1:1").listen == "127.0.0.1:1"
    assert load_settings(None, env={}).backend == "sqlite"
    assert load_settings(None, env={"COORDD_DATABASE_URL": "postgresql://x@h/db"}).backend == "postgresql"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COORDD_METRICS_PORT": "abc"}, "metrics_port"),
        ({"COORDD_LISTEN": "nohost"}, "listen"),
        ({"COORDD_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"COORDD_DATABSE_URL": "postgresql://x@h/db"}, "unknown setting; did you mean COORDD_DATABASE_URL"),
        ({"COORDD_SCHEDULER_ENABLED": "maybe"}, "boolean"),
        ({"COORDD_JWT_SECRET": "short"}, "jwt_secret"),
        ({"COORDD_ARGON2_MEMORY_KIB": "4"}, "argon2_memory_kib"),
    ],
)
def test_bad_config_names_the_setting(env, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(None, env=env)
    assert "\n" not in str(info.value)


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(tmp_path / "missing.toml"), env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(str(broken), env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(str(unknown), env={})


def test_ids_are_unique_and_time_ordered():
    ids = [new_id(now_ms=1_700_000_000_000 + i) for i in range(100)]
    assert ids == sorted(ids)
    assert len({new_id() for _ in range(10000)}) == 10000
    assert all(is_id(i) for i in ids)


def test_domain_settings_reach_the_domains(settings_factory, clock):
    from coordd.domain import competition, jobs
    from tests.support.server import ServerHandle

    server = ServerHandle(
        settings_factory(job_fee_bps=1234, job_backoff_base_s=2.5, competition_offer_hold_s=600), clock
    )
    try:
        assert jobs.policy_of(server.rt).fee_bps == 1234
        assert jobs.policy_of(server.rt).backoff_base_s == 2.5
        assert competition.settings_of(server.rt).default_offer_hold_s == 600
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="job_fee_bps"):
        load_settings(None, env={"COORDD_JOB_FEE_BPS": "20000"})


def test_gc_threshold_is_validated():
    assert load_settings(None, env={}).gc_threshold == 50000
    assert load_settings(None, env={"COORDD_GC_THRESHOLD": "0"}).gc_threshold == 0
    with pytest.raises(ConfigError, match="gc_threshold"):
        load_settings(None, env={"COORDD_GC_THRESHOLD": "-1"})
