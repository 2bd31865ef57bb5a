"""A PostgreSQL server for the tests, and a fresh empty database per test.

``pg_server`` (session): the server URL. RELAY_TEST_POSTGRES_URL if set (a ``postgresql://`` URL
of a role that may CREATE DATABASE); otherwise a throwaway cluster started from the server
binaries found on this machine (initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin), in a
temporary directory, listening on 127.0.0.1 only with trust authentication, stopped at the end
of the session. initdb refuses to run as root, so as root the cluster belongs to the
``postgres`` user. Without either the Postgres tests are skipped, unless RELAY_REQUIRE_POSTGRES=1
(CI), which makes them fail instead.

``pg_url`` (function): the URL of a new database, dropped after the test.

Also a command line, for .ci/run::

    python -m tests.pg find        # the binaries' directory; exit 1 if there are none
    python -m tests.pg start DIR   # init and start a cluster in DIR; prints its URL
    python -m tests.pg stop DIR    # stop it
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

SERVER_USER = "postgres"  # who owns the cluster when we are root
SUPERUSER = "postgres"  # the cluster's superuser (initdb -U)


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name  # /usr/lib/postgresql/15/bin -> "15"
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        # Resolve symlinks: initdb finds the postgres binary beside its real self.
        return Path(initdb).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(Path(candidate, tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway cluster in ``base``/data, logging to ``base``/server.log.

    ``durable``: keep PostgreSQL's default fsync and synchronous commit (benchmarks compare
    it with SQLite's synchronous=FULL); tests turn both off for speed.
    """

    def __init__(self, base: Path, bin_dir: Path, *, durable: bool = False) -> None:
        self.durable = durable
        self.base = base
        self.bin_dir = bin_dir
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return args
        if shutil.which("runuser"):
            return ["runuser", "-u", SERVER_USER, "--", *args]
        return ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(args)]

    def _run(self, args: list[str], what: str, timeout: float = 120) -> None:
        done = subprocess.run(
            self._as_owner(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"postgres test cluster: {what} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{log}"
            )

    def start(self) -> str:
        """initdb and start; the superuser's URL to the ``postgres`` database."""
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"postgres test cluster: running as root and there is no {SERVER_USER!r} "
                    "user to own the cluster (initdb refuses to run as root)"
                ) from None
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self.base.chmod(0o700)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        # Trust, but on 127.0.0.1 only: no Unix socket, no other address, no replication.
        self._write("pg_hba.conf", "host all all 127.0.0.1/32 trust\n")
        for attempt in range(3):
            self.port = _free_port()
            self._write(
                "postgresql.auto.conf",
                "\n".join(
                    [
                        "listen_addresses = '127.0.0.1'",
                        f"port = {self.port}",
                        "unix_socket_directories = ''",
                        "max_connections = 200",
                        # A throwaway: durability buys nothing here, and costs test time.
                        *(
                            ()
                            if self.durable
                            else (
                                "fsync = off",
                                "synchronous_commit = off",
                                "full_page_writes = off",
                            )
                        ),
                        "",
                    ]
                ),
            )
            try:
                self._pg_ctl("start", "-l", str(self.log))
                return self.url
            except RuntimeError:
                if attempt == 2:  # the port was taken between picking and binding, thrice
                    raise
        raise AssertionError("unreachable")

    def _write(self, name: str, text: str) -> None:
        path = self.data / name
        path.write_text(text)  # root may write the postgres user's file; it keeps its owner

    def _pg_ctl(self, action: str, *extra: str) -> None:
        args = [str(self.bin_dir / "pg_ctl"), action, "-D", str(self.data), "-w", "-t", "60"]
        self._run([*args, *extra], f"pg_ctl {action}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._pg_ctl("start", "-l", str(self.log))

    def require_password(self, role: str) -> None:
        """Make ``role`` log in with its password (SCRAM); everyone else stays trusted."""
        self._write(
            "pg_hba.conf",
            f"host all {role} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
        )
        self._pg_ctl("reload")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("RELAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"RELAY_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def new_cluster() -> Iterator[Cluster]:
    """Start a cluster of our own (skip or fail without binaries); stop and remove it after."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
            "/usr/lib/postgresql/*/bin, and RELAY_TEST_POSTGRES_URL is not set"
        )
    base = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    cluster = Cluster(base, bin_dir)
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _unavailable(str(exc))
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A server URL whose role may create databases."""
    url = os.environ.get("RELAY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with new_cluster() as cluster:
        yield cluster.url


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server; its URL. Dropped after (whoever is still on it)."""
    import psycopg
    from psycopg import sql

    name = f"relay_test_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        _unavailable(f"cannot create a test database on RELAY_TEST_POSTGRES_URL's server: {exc}")
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """The URL of a new, empty database for this test alone."""
    with fresh_database(pg_server) as url:
        yield url


def main(argv: list[str]) -> int:
    usage = "usage: python -m tests.pg find | start DIR | stop DIR"
    if argv == ["find"]:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            print("no PostgreSQL server binaries found", file=sys.stderr)
            return 1
        print(bin_dir)
        return 0
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(usage, file=sys.stderr)
        return 2
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("no PostgreSQL server binaries found", file=sys.stderr)
        return 1
    cluster = Cluster(Path(argv[1]).resolve(), bin_dir)
    try:
        if argv[0] == "start":
            print(cluster.start())
        else:
            cluster.stop()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
