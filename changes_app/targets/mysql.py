"""MySQL and MariaDB as a separate SQL database (through PyMySQL), with the ``sql`` template.

Settings: ``{"kind": "mysql", "url_env": "FLAMINGOCK_MARIADB_URL"}`` with a URL
``mysql://user:password@host:3306/database`` (``mariadb://`` works too), optional ``timeout``
(seconds, default 10). The password is registered as a secret and never shown.

MySQL commits implicitly around DDL (CREATE, ALTER, DROP, RENAME, TRUNCATE), so:

- a data change is transactional: it runs with the marker strategy, its marker row (in
  ``flamingock_marker``, in the target database) committing with its effect;
- a YAML change whose SQL holds DDL is non-transactional by inference (STARTED, apply, APPLIED,
  compensation by its rollback), and validation refuses ``transactional: true`` on it;
- a Python change holding DDL declares ``transactional = False``; inside a transaction the cursor
  refuses DDL before sending it, so that an implicit commit can never break the marker's promise.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from audit_app.redaction import redact
from changes_app.definitions import Strategy
from changes_app.targets.base import (
    MARKER_DDL,
    MARKER_INSERT,
    MARKER_SELECT,
    MarkerConflict,
    TargetSystem,
    TargetUnavailable,
    TransactionBound,
    idle_transaction_limit,
    mysql_idle_limit_set,
    register_target_kind,
)
from changes_app.targets.common import number_problems, setting_problems, setting_read
from changes_app.targets.templates import NON_TRANSACTIONAL

DDL = NON_TRANSACTIONAL["mysql"]


class ImplicitCommitRefused(Exception):
    """A statement that MySQL commits implicitly was sent inside a change's transaction."""


class GuardedCursor:
    """A PyMySQL cursor that refuses DDL inside a transaction: MySQL would commit everything so far."""

    def __init__(self, cursor):
        self._cursor = cursor

    def _check(self, query: str) -> None:
        if DDL.search(query):
            words = " ".join(query.split())[:60]
            raise ImplicitCommitRefused(
                f"{words!r} is DDL, which MySQL and MariaDB commit implicitly: it cannot run in the change's transaction. "
                "Declare the change non-transactional (transactional = False)."
            )

    def execute(self, query: str, args: Any = None) -> int:
        self._check(query)
        return self._cursor.execute(query, args)

    def executemany(self, query: str, args: Any) -> int | None:
        self._check(query)
        return self._cursor.executemany(query, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self):
        return iter(self._cursor)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._cursor.close()


class MySQLTarget(TargetSystem):
    """An external MySQL or MariaDB database by URL; changes get ``cursor`` and ``connection`` (PyMySQL)."""

    kind = "mysql"
    supports_transactions = True
    transaction_bound = TransactionBound.SERVER
    secret_keys = frozenset({"url", "password"})

    def __init__(self, name, config):
        super().__init__(name, config)
        self._connection = None
        self._marker_ready = False

    @classmethod
    def config_problems(cls, config):
        return setting_problems(config, "url", schemes=("mysql", "mariadb")) + number_problems(config, "timeout")

    @property
    def dialect(self) -> str:
        return "mysql"

    def dependency_names(self):
        return {"context", "cursor", "connection"}

    def strategy(self, *, transactional):
        return Strategy.MARKER if transactional else Strategy.NON_TRANSACTIONAL

    def _parameters(self) -> dict[str, Any]:
        url = urlsplit(setting_read(self, "url"))
        timeout = float(self.config.get("timeout", 10))
        options = {key: values[-1] for key, values in parse_qs(url.query).items()}
        return {
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 3306,
            "user": unquote(url.username or "root"),
            "password": unquote(url.password or ""),
            "database": unquote(url.path.lstrip("/")) or None,
            "charset": options.get("charset", "utf8mb4"),
            "connect_timeout": timeout,
            "autocommit": True,
        }

    def _connect(self):
        import pymysql

        if self._connection is not None:
            try:
                self._connection.ping()
            except pymysql.err.MySQLError:  # the server closed it (wait_timeout, restart): connect again
                self.close()
        try:
            if self._connection is None:
                self._connection = pymysql.connect(**self._parameters())
                # A paused holder must not block a takeover: the server ends its idle transaction
                # below the lease (MariaDB; MySQL closes the idle session instead).
                with self._connection.cursor() as cursor:
                    mysql_idle_limit_set(cursor, "mariadb" in self._connection.get_server_info().lower(), idle_transaction_limit())
        except pymysql.err.MySQLError as error:
            self._connection = None
            raise TargetUnavailable(f"target {self.name!r} cannot be reached: {redact(str(error))}") from error
        return self._connection

    def _marker_ensure(self, connection) -> None:
        # CREATE TABLE commits implicitly: it runs before the change's transaction, never inside it.
        if not self._marker_ready:
            with connection.cursor() as cursor:
                cursor.execute(MARKER_DDL)
            self._marker_ready = True

    @contextmanager
    def session(self, *, atomic):
        connection = self._connect()
        if not atomic:
            with connection.cursor() as cursor:
                yield {"cursor": cursor, "connection": connection}
            return
        self._marker_ensure(connection)
        connection.begin()
        try:
            with GuardedCursor(connection.cursor()) as cursor:
                yield {"cursor": cursor, "connection": connection}
        except BaseException:
            try:
                connection.rollback()
            except Exception:  # the connection is gone: the server rolled the transaction back itself
                self.close()
            raise
        connection.commit()

    def marker_insert(self, dependencies, *, change_id, generation, run_id, token):
        import pymysql

        try:
            dependencies["cursor"].execute(MARKER_INSERT, [change_id, generation, run_id, token])
        except pymysql.err.IntegrityError as error:
            raise MarkerConflict(str(error)) from error

    def marker_lookup(self, *, change_id, generation):
        connection = self._connect()
        self._marker_ensure(connection)
        with connection.cursor() as cursor:
            cursor.execute(MARKER_SELECT, [change_id, generation])
            row = cursor.fetchone()
        return {"run_id": row[0], "fencing_token": row[1]} if row else None

    def close(self):
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # already closed by the server; nothing left to release
                pass
            self._connection = None


register_target_kind(MySQLTarget)
