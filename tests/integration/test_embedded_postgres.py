"""The embedded PostgreSQL server: start, serve, stop, restart, recover from a crash."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from devstack.postgres import EmbeddedPostgres


def query(server: EmbeddedPostgres, sql: str):
    with psycopg.connect(server.address.url("postgres"), autocommit=True) as conn:
        return conn.execute(sql).fetchall() if sql.lstrip().upper().startswith("SELECT") else conn.execute(sql)


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive")


@pytest.fixture
def server(tmp_path):
    instance = EmbeddedPostgres(tmp_path / "pg")
    yield instance
    instance.stop()


def test_starts_serves_and_stops_twice_in_a_row(server):
    for round_number in (1, 2):
        server.start()
        pid = server.running_pid()
        assert pid is not None
        assert query(server, "SELECT 1") == [(1,)]
        if round_number == 1:
            query(server, "CREATE TABLE kept (n int)")
            query(server, "INSERT INTO kept VALUES (42)")
        else:
            assert query(server, "SELECT n FROM kept") == [(42,)]
        server.stop()
        assert server.running_pid() is None
        wait_gone(pid)
        assert not (server.data_dir / "postmaster.pid").exists()


def test_a_second_start_reuses_the_running_server(server):
    first = server.start()
    pid = server.running_pid()
    again = EmbeddedPostgres(server.root).start()
    assert again.port == first.port
    assert server.running_pid() == pid


def test_recovers_after_the_previous_run_crashed(server):
    server.start()
    query(server, "CREATE TABLE survived (n int)")
    query(server, "INSERT INTO survived VALUES (7)")
    pid = server.running_pid()
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert (server.data_dir / "postmaster.pid").exists()  # stale, as a crash leaves it

    server.start()
    assert server.running_pid() not in (None, pid)
    assert query(server, "SELECT n FROM survived") == [(7,)]


def test_stale_pid_file_naming_a_live_unrelated_process(server):
    server.start()
    server.stop()
    # A reused pid: alive, but not a PostgreSQL server (it is this test).
    port = 5432
    (server.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{server.data_dir}\n0\n{port}\n")
    server.start()
    assert server.running_pid() not in (None, os.getpid())
    assert query(server, "SELECT 1") == [(1,)]
