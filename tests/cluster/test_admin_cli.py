"""`coordd admin create-user --database-url` works on PostgreSQL alone: no key file anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import infra
from tests.support.process import FAST_KDF_ENV


def test_create_user_with_a_database_url_writes_nothing_into_the_data_dir_or_the_working_dir(tmp_path):
    infra.require("postgresql")
    data_dir = tmp_path / "data"
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}, **FAST_KDF_ENV}
    with infra.fresh_pg_database() as url:
        for args in (["--data-dir", str(data_dir)], []):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "coordd",
                    "admin",
                    "create-user",
                    "--database-url",
                    url,
                    *args,
                    "--email",
                    f"root{len(args)}@example.com",
                    "--role",
                    "admin",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=work,
                env=env,
            )
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["api_key_secret"].startswith("ck_")
    assert not data_dir.exists(), (
        "no data dir (and so no jwt.secret, coordinator.key, secrets.key) is created"
    )
    assert list(work.iterdir()) == [], "nor a ./var in the working directory"
