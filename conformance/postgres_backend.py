"""The ``postgres`` and ``server-postgres`` conformance back-ends, on a real PostgreSQL.

Spec: ``spec/conformance.md`` (back-ends) and ``spec/postgres-storage.md``.

Theory of operation.  The back-ends need a PostgreSQL server.  With the
environment variable ``DHRUVA_TEST_POSTGRES`` set to a libpq connection
string, that server is used.  Otherwise the first factory starts a throwaway
cluster, once per process: ``initdb`` into a temporary directory (with
``scram-sha-256`` authentication and a known password, so that tests can
also present a wrong one), then ``postgres -D DIR -k SOCKDIR -c
listen_addresses=''``: a Unix socket only, no TCP port.  PostgreSQL refuses
to run as root, so as root both run as the ``postgres`` user.  The server
is stopped by pid (SIGINT: fast shutdown, then wait) when the process exits
or the pytest session ends (:func:`stop_cluster`).

Each factory uses a schema of its own, ``t_<random>``, dropped at cleanup:
every test gets a fresh database.  The factory writes its connection string
and schema to ``postgres.json`` in its directory, so that a child process
(capability ``subprocess``) given the back-end name and directory reaches
the same database without starting a cluster of its own.

When psycopg is not installed, creating either back-end skips the test with
a reason naming the extra; the nox session installs the extra, so in CI the
tests run.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from dhruva_conformance.backends import (
    CAP_READONLY,
    CAP_REOPEN,
    CAP_SUBPROCESS,
    BaseFactory,
    StorageFactory,
    register_backend,
)

from dhruva.storage import CAP_BLOBS, CAP_DURABLE, CAP_PACK, CAP_SNAPSHOTS, Storage

ENV_DSN = "DHRUVA_TEST_POSTGRES"
PASSWORD = "dhruva-test-password"
USER = "postgres"
DATABASE = "dhruva_test"
PORT = 5432
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CONFIG_NAME = "postgres.json"


def psycopg_missing_reason() -> str | None:
    """Return why the postgres back-ends cannot run here, or None when they can."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install 'dhruva[postgres]')"
    return None


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory, on a Unix socket."""

    def __init__(self) -> None:
        self._as_postgres = os.geteuid() == 0
        # As root, in /tmp: the postgres user must reach the directory, and a
        # TMPDIR under /root would stop it.  The socket path must also stay
        # short (108 bytes), which a deep TMPDIR can break.
        parent = "/tmp" if self._as_postgres and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="dhruva-pg-", dir=parent))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "postgres.log"
        if self._as_postgres:
            import pwd

            entry = pwd.getpwnam(USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def _user_options(self) -> dict[str, Any]:
        # As root, run as the postgres user; Popen(user=...) makes the pid we
        # hold the postmaster's own (runuser would stand between).
        if self._as_postgres:
            return {"user": USER, "group": USER, "extra_groups": []}
        return {}

    def _tool(self, name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise RuntimeError(f"{name} is not on PATH; install PostgreSQL or set {ENV_DSN}")
        return path

    def init(self) -> None:
        """Run initdb with scram-sha-256 authentication and a known password."""
        password_file = self.root / "pwfile"
        password_file.write_text(PASSWORD + "\n")
        if self._as_postgres:
            import pwd

            entry = pwd.getpwnam(USER)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                self._tool("initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._user_options(),
        )
        password_file.unlink()

    def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [
                    self._tool("postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.socket_dir),
                    "-p",
                    str(PORT),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=on",
                    "-c",
                    "max_connections=100",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                **self._user_options(),
            )
        finally:
            log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, immediate: bool = False) -> None:
        """Stop the postmaster by pid: SIGINT (fast) or SIGQUIT (immediate), then wait."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_immediate_with_pg_ctl(self) -> None:
        """``pg_ctl stop -m immediate``, as an operator would, then reap the pid."""
        subprocess.run(
            [self._tool("pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w"],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._user_options(),
        )
        process, self.process = self.process, None
        if process is not None:
            process.wait(STOP_TIMEOUT_S)

    def dsn(self, dbname: str = DATABASE, password: str = PASSWORD, user: str = USER) -> str:
        return f"host={self.socket_dir} port={PORT} dbname={dbname} user={user} password={password}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


_CLUSTER: Cluster | None = None


def cluster() -> Cluster | None:
    """Return the throwaway cluster of this process, starting it on first use.

    Returns None when ``DHRUVA_TEST_POSTGRES`` names an existing server.
    """
    global _CLUSTER
    if os.environ.get(ENV_DSN):
        return None
    if _CLUSTER is None:
        started = Cluster()
        try:
            started.init()
            started.start()
            import psycopg

            with psycopg.connect(started.dsn("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        except BaseException:
            started.remove()
            raise
        _CLUSTER = started
        atexit.register(stop_cluster)
    return _CLUSTER


def stop_cluster() -> None:
    """Stop and remove the cluster this process started, if any (by pid)."""
    global _CLUSTER
    started, _CLUSTER = _CLUSTER, None
    if started is not None:
        started.remove()


def base_dsn() -> str:
    """The connection string of the test database (external or throwaway)."""
    external = os.environ.get(ENV_DSN)
    if external:
        return external
    running = cluster()
    assert running is not None
    return running.dsn()


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        # A storage a failed test left open holds a read snapshot (PG-080),
        # whose table locks would block the DROP for ever: end those sessions.
        conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c"
            " ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
            (schema,),
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class PostgresFactory(BaseFactory):
    """PostgresStorage on a schema of its own in the test database."""

    name = "postgres"
    capabilities = frozenset(
        {CAP_REOPEN, CAP_DURABLE, CAP_SUBPROCESS, CAP_READONLY, CAP_PACK, CAP_SNAPSHOTS, CAP_BLOBS}
    )

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        reason = psycopg_missing_reason()
        if reason is not None:
            import pytest

            pytest.skip(reason)
        super().__init__(directory)
        self.config_path = self.directory / CONFIG_NAME
        self._owner = False
        if self.config_path.exists():
            config = json.loads(self.config_path.read_text())
            self.dsn: str = config["dsn"]
            self.schema: str = config["schema"]
        else:
            self.dsn = base_dsn()
            self.schema = "t_" + uuid.uuid4().hex[:16]
            self.config_path.write_text(json.dumps({"dsn": self.dsn, "schema": self.schema}))
            self._owner = True

    def _open(self, reopen: bool, **options: Any) -> Storage:
        from dhruva.postgres_storage import PostgresStorage

        if not reopen:
            drop_schema(self.dsn, self.schema)
        return PostgresStorage(self.dsn, schema=self.schema, **options)

    def crash(self, storage: Storage) -> None:
        """Abandon the connection as a killed process would: no ROLLBACK, no goodbye."""
        from dhruva.postgres_storage import PostgresStorage

        assert isinstance(storage, PostgresStorage)
        storage._abandon()

    def cleanup(self) -> None:
        super().cleanup()
        if self._owner:
            with contextlib.suppress(Exception):
                drop_schema(self.dsn, self.schema)


def make_server_postgres(directory: Path) -> StorageFactory:
    """Return a factory serving a PostgresStorage through a storage server."""
    from dhruva_conformance.server_backends import _ServerFactory

    class ServerPostgresFactory(_ServerFactory):
        """PostgresStorage behind a storage server in a thread of this process."""

        name = "server-postgres"
        # Not "subprocess": a child would reach PostgreSQL directly, not the server.
        capabilities = PostgresFactory.capabilities - {CAP_SUBPROCESS}

        def __init__(self, directory: str | os.PathLike[str]) -> None:
            self._postgres = PostgresFactory(directory)
            super().__init__(directory)

        def _inner(self, reopen: bool, **options: Any) -> Storage:
            return self._postgres._open(reopen, **options)

        def _crash_inner(self, inner: Storage) -> None:
            self._postgres.crash(inner)

        def cleanup(self) -> None:
            super().cleanup()
            self._postgres.cleanup()

    return ServerPostgresFactory(directory)


register_backend("postgres", PostgresFactory)
register_backend("server-postgres", make_server_postgres)
