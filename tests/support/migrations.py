"""An install to migrate by hand, on either backend: what migration tests start from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from coordd.store.db import Store
from tests.support import infra
from tests.support.server import make_settings


@contextmanager
def install_store(tmp_path: Path, engine: str) -> Iterator[Store]:
    """A store on a fresh database ("sqlite": a file under tmp_path; "postgresql": a database
    of its own), with nothing migrated yet; closed afterwards."""
    if engine == "postgresql":
        infra.require("postgresql")
        database = infra.fresh_pg_database()
    else:
        database = nullcontext("")
    with database as url:
        store = Store(make_settings(str(tmp_path / "data"), url))
        try:
            yield store
        finally:
            store.db.close()
