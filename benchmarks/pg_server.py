"""A PostgreSQL server for the benchmarks: the one given, or a throwaway durable cluster."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))


@contextlib.contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.pg import Cluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries: install postgresql or pass --postgres")
    base = Path(tempfile.mkdtemp(prefix="relay-bench-pg-"))
    cluster = Cluster(base, bin_dir, durable=True)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def new_database(server: str) -> str:
    import psycopg
    from psycopg import sql

    from tests.pg import with_database

    name = f"relay_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server, name)
