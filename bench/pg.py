"""The PostgreSQL server the benchmarks use: fresh databases (cloned from templates), facts, cleanup."""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

import psycopg


class PostgresServer:
    """Creates and drops this run's databases; every name starts with ``flk_bench_<pid>_``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.prefix = f"flk_bench_{os.getpid()}_"
        self._counter = itertools.count(1)
        self._created: list[str] = []
        try:
            self._admin = psycopg.connect(f"{self.url}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as error:
            raise SystemExit(f"PostgreSQL is required at {self.url} (see ../shared/services.md): {error}") from None

    def database_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def database_create(self, label: str, *, template: str | None = None) -> str:
        """A new empty database, or a copy of ``template``; returns its name."""
        name = f"{self.prefix}{next(self._counter)}_{re.sub(r'[^a-z0-9_]', '_', label.lower())}"[:63]
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        for attempt in range(20):
            try:
                self._admin.execute(sql)
                break
            except psycopg.errors.ObjectInUse:
                # The template's last user (a child process) may not have disconnected yet.
                if attempt == 19:
                    raise
                time.sleep(0.1)
        self._created.append(name)
        return name

    def database_drop(self, name: str) -> None:
        self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._created:
            self._created.remove(name)

    def execute(self, database: str, sql: str) -> None:
        with psycopg.connect(self.database_url(database), autocommit=True) as connection:
            connection.execute(sql)

    def scalar(self, database: str, sql: str) -> Any:
        with psycopg.connect(self.database_url(database), autocommit=True) as connection:
            return connection.execute(sql).fetchone()[0]

    def facts(self) -> dict[str, Any]:
        names = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_connections", "wal_level", "jit")
        facts = {name: self._admin.execute(f"SHOW {name}").fetchone()[0] for name in names}
        facts["url"] = self.url
        return facts

    def commit_latency(self, commits: int = 300) -> str:
        """Median and p95 of one durable one-row commit (an ``INSERT`` in autocommit into a logged
        table of a scratch database): the unit that the run start, the lock cycle with audit and
        every apply are made of, and the fact that moves most between runs on a shared disk."""
        name = self.database_create("commit_probe")
        try:
            with psycopg.connect(self.database_url(name), autocommit=True) as connection:
                connection.execute("CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
                samples = []
                for _ in range(commits + 20):
                    started = time.perf_counter()
                    connection.execute("INSERT INTO probe DEFAULT VALUES")
                    samples.append(time.perf_counter() - started)
            samples = sorted(samples[20:])
            return f"median {samples[len(samples) // 2] * 1000:.3f} ms, p95 {samples[int(len(samples) * 0.95)] * 1000:.3f} ms ({commits} commits)"
        finally:
            self.database_drop(name)

    def close(self) -> None:
        for name in list(self._created):
            try:
                self.database_drop(name)
            except psycopg.Error:
                pass
        self._admin.close()
