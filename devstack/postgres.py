"""A private PostgreSQL server for local runs and tests.

Used only when no ``crm_export_postgres`` connection is configured: the local
run and the test suite start one under an ignored project folder and stop it
when they are done. Production deployments always point the connection at
their own PostgreSQL.

The binaries come from the ``pgserver`` wheel (pinned in requirements.txt), so
a machine without PostgreSQL installed still works; ``CRM_EXPORT_PG_BINDIR``
points at any other installation.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SERVICE_USER = "nobody"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL server could not be started or stopped."""


def find_bindir() -> Path:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` live."""
    configured = os.environ.get("CRM_EXPORT_PG_BINDIR")
    candidates: list[Path] = []
    if configured:
        candidates.append(Path(configured))
    # Located without importing it: pgserver's import has side effects we do not want.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)
    for candidate in candidates:
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    raise EmbeddedPostgresError(
        "No PostgreSQL binaries found: install the pinned requirements (they include the "
        "'pgserver' wheel) or set CRM_EXPORT_PG_BINDIR to a directory holding pg_ctl and initdb."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_postgres(pid: int) -> bool:
    """Whether ``pid`` is a PostgreSQL server (a stale pid file may name a reused pid)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return _pid_alive(pid)  # no /proc (macOS): trust the pid


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"


class EmbeddedPostgres:
    """Starts, reuses and stops one PostgreSQL server whose data lives in ``root``.

    ``start()`` is safe after a crash: a ``postmaster.pid`` left by a dead
    server is removed, one left by a live server is reused. Data survives
    ``stop()``; a second ``start()`` serves the same databases.
    """

    user = "crm_export"

    def __init__(self, root: Path, *, port: int | None = None, wal_level: str = "logical") -> None:
        self.root = Path(root).resolve()
        self.wal_level = wal_level  # replica: a server as most are set up, without logical decoding
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self._requested_port = port
        self._bindir: Path | None = None
        self.address: ServerAddress | None = None
        self._password: str | None = None

    @property
    def password(self) -> str:
        """Random per data folder (loopback only); kept beside the data for later starts."""
        if self._password is None:
            path = self.root / "password"
            if not path.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                path.write_text(secrets.token_urlsafe(18))
                path.chmod(0o600)
            self._password = path.read_text().strip()
        return self._password

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    def _run_as(self) -> dict:
        # PostgreSQL refuses to run as root; CI and containers often are root.
        if os.geteuid() == 0:
            return {"user": _SERVICE_USER, "group": "nogroup" if _group_exists("nogroup") else None}
        return {}

    def _chown_for_service(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        import pwd

        entry = pwd.getpwnam(_SERVICE_USER)
        for dirpath, _dirnames, filenames in os.walk(path):
            os.chown(dirpath, entry.pw_uid, entry.pw_gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)
        _make_traversable(path.parent)

    def _pg(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        run_as = {k: v for k, v in self._run_as().items() if v is not None}
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
            check=False,
            **run_as,
        )

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.root / ".pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown_for_service(self.root)
        result = self._pg(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed in {self.data_dir}:\n{result.stderr}")
        log.info("Initialised embedded PostgreSQL data in %s", self.data_dir)

    def running_pid(self) -> int | None:
        """The pid of a live server on this data directory, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first_lines = pid_file.read_text().splitlines()
        except OSError:
            return None
        if not first_lines:
            return None
        pid = int(first_lines[0])
        if _pid_alive(pid) and _is_postgres(pid):
            return pid
        return None

    def _port_from_pid_file(self) -> int:
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def _remove_stale_pid_file(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists() and self.running_pid() is None:
            log.warning("Removing stale %s left by a server that is no longer running", pid_file)
            pid_file.unlink()

    def start(self, *, timeout: float = 60) -> ServerAddress:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        live = self.running_pid()
        if live is not None:
            port = self._port_from_pid_file()
            log.info("Reusing embedded PostgreSQL (pid %s) on port %s", live, port)
        else:
            self._remove_stale_pid_file()
            port = self._requested_port or _free_port()
            self.socket_dir.mkdir(exist_ok=True)
            self._chown_for_service(self.socket_dir)
            if self.log_file.exists():
                self._chown_for_service(self.log_file)
            # fsync=off: a local server survives its own crash (commits reach
            # the WAL before they return) but not a power loss; fine for local
            # runs and tests, never used in a deployment. Prepared transactions
            # are allowed so tests can hold one open, as a two-phase-commit
            # writer does. wal_level=logical: a stream may follow a table
            # through logical decoding (capture: logical).
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
                "-c fsync=off -c max_connections=200 -c shared_buffers=128MB -c max_prepared_transactions=20 "
                f"-c wal_level={self.wal_level} -c max_replication_slots=20 -c max_wal_senders=20"
            )
            result = self._pg(
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                timeout=timeout + 10,
            )
            if result.returncode != 0:
                tail = _tail(self.log_file)
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not start in {self.data_dir}: {result.stderr.strip()}\n"
                    f"Last lines of {self.log_file}:\n{tail}"
                )
            log.info("Started embedded PostgreSQL on 127.0.0.1:%s (data in %s)", port, self.data_dir)
        self.address = ServerAddress("127.0.0.1", port, self.user, self.password)
        return self.address

    def stop(self, *, timeout: float = 30) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        result = self._pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)))
        if result.returncode != 0 and self.running_pid() is not None:
            log.warning("pg_ctl stop failed (%s); sending SIGQUIT to %s", result.stderr.strip(), pid)
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + timeout
            while self.running_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        log.info("Stopped embedded PostgreSQL (data kept in %s)", self.data_dir)

    def create_database(self, name: str) -> None:
        """Create ``name`` unless it exists."""
        import psycopg
        from psycopg import sql

        assert self.address is not None, "start() first"
        with psycopg.connect(self.address.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        assert self.address is not None, "start() first"
        with psycopg.connect(self.address.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _make_traversable(path: Path) -> None:
    """Let the service user reach the data folder through its parents (root only)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
