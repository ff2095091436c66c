"""Configuration fails only on its own: client and test variables never stop the daemon."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coordd.config import ConfigError, load_settings

NOT_THE_DAEMONS = {
    "COORDD_NODE_KEY": "ck_not-the-daemons",  # coordctl's old name (now COORDCTL_NODE_KEY)
    "COORDD_JOB": "jobs/1",  # set by coordctl's job runner for its child
    "COORDD_JOB_ATTEMPT": "1",
    "COORDD_TEST_PG_URL": "postgresql://postgres@127.0.0.1:5432/test",  # the test suite's
    "COORDD_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
    "COORDD_TEST_ANYTHING_NEW": "x",
    "COORDCTL_TARGET": "127.0.0.1:1",
}


def test_client_and_test_variables_are_ignored_without_a_word():
    settings = load_settings(None, env={**NOT_THE_DAEMONS, "COORDD_LISTEN": "127.0.0.1:7000"})
    assert settings.listen == "127.0.0.1:7000"
    assert settings.warnings == []


def test_an_unknown_variable_is_a_warning_naming_it():
    settings = load_settings(None, env={"COORDD_SOMETHING_ELSE": "1", "COORDD_METRICS": "on"})
    assert settings.warnings == [
        "environment COORDD_METRICS: not a coordd setting; ignored",
        "environment COORDD_SOMETHING_ELSE: not a coordd setting; ignored",
    ]


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("COORDD_DATABSE_URL", "COORDD_DATABASE_URL"),
        ("COORDD_LISTN", "COORDD_LISTEN"),
        ("COORDD_REDIS_UR", "COORDD_REDIS_URL"),
        ("COORDD_METRIC_PORT", "COORDD_METRICS_PORT"),
    ],
)
def test_a_close_misspelling_of_a_setting_is_an_error_saying_what_was_meant(variable, setting):
    with pytest.raises(ConfigError, match=f"{variable}: unknown setting; did you mean {setting}\\?"):
        load_settings(None, env={variable: "x"})


def test_unknown_keys_in_the_daemons_own_config_file_are_still_errors(tmp_path):
    config = tmp_path / "coordd.toml"
    config.write_text('node_key = "ck_x"\n')
    with pytest.raises(ConfigError, match="unknown setting 'node_key'"):
        load_settings(str(config), env={})


def test_the_daemon_starts_with_foreign_variables_and_logs_unknown_ones(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "COORDD_LOG_FORMAT": "json",
        **NOT_THE_DAEMONS,
        "COORDD_SOMETHING_ELSE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "coordd", "migrate", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "COORDD_" in line]
    assert len(warnings) == 1 and "COORDD_SOMETHING_ELSE" in warnings[0] and '"warning"' in warnings[0]


def test_coordctl_reads_its_node_key_from_coordctl_node_key(monkeypatch, capsys):
    from coordd_client.cli.node import _node_key_from_env

    monkeypatch.setenv("COORDCTL_NODE_KEY", "ck_new")
    monkeypatch.setenv("COORDD_NODE_KEY", "ck_old")
    assert _node_key_from_env() == "ck_new"
    monkeypatch.delenv("COORDCTL_NODE_KEY")
    assert _node_key_from_env() == "ck_old", "the old name still works"
    assert "COORDD_NODE_KEY is deprecated; use COORDCTL_NODE_KEY" in capsys.readouterr().err
