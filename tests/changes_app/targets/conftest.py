"""Fixtures of the target-system tests: the real servers of this machine, each test in its own corner.

- Redis: keys under ``flk:<unique>:``, deleted after the test.
- RabbitMQ: exchanges and queues named ``flk.<unique>.*``, deleted after the test.
- MariaDB: one database per test session, created here and dropped at the end; tables carry the
  test's unique suffix.
- The SaaS API: examples/demo_saas.py, started per test in a thread of this process with a random
  token (child processes reach it over TCP like any client).

A server that does not answer makes the test fail loudly; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from urllib.parse import urlsplit

import pymysql
import pytest
import redis

from examples.demo_saas import serve

REDIS_URL = os.environ.get("FLAMINGOCK_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("FLAMINGOCK_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
MARIADB_SERVER = os.environ.get("FLAMINGOCK_TEST_MARIADB", "mysql://root@127.0.0.1:3306")


def mariadb_connect(url: str, **options) -> pymysql.Connection:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or None,
        autocommit=True,
        connect_timeout=5,
        **options,
    )


@pytest.fixture(scope="session")
def mariadb_url():
    """A fresh MariaDB database on the local server for this test session."""
    name = f"flk_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = mariadb_connect(MARIADB_SERVER)
    except pymysql.err.MySQLError as error:
        pytest.fail(f"MariaDB is required at {MARIADB_SERVER} (root, no password): {error}")
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    yield f"{MARIADB_SERVER}/{name}"
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


@pytest.fixture(scope="session")
def brokers_up():
    """Redis and RabbitMQ answer, or every test here fails at once with a message that says which."""
    import kombu

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is required at {REDIS_URL}: {error}")
    try:
        with kombu.Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            connection.connect()
    except Exception as error:  # kombu raises the socket's or the AMQP library's own errors
        pytest.fail(f"RabbitMQ is required at {RABBITMQ_URL} (guest/guest): {error}")


@pytest.fixture
def saas():
    """The demo SaaS API with a random bearer token, for this test only."""
    running = serve(token=f"flk-token-{secrets.token_hex(12)}")
    yield running
    running.stop()


@pytest.fixture
def redis_client(unique):
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is required at {REDIS_URL}: {error}")
    yield client
    for key in client.scan_iter(f"flk:{unique}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def rabbit_names(unique):
    """``name("orders")`` gives ``flk.<unique>.orders``; every name given is deleted after the test."""
    import kombu

    given: list[str] = []

    def name(suffix: str) -> str:
        given.append(f"flk.{unique}.{suffix}")
        return given[-1]

    yield name
    with kombu.Connection(RABBITMQ_URL, connect_timeout=5) as connection:
        for each in given:
            channel = connection.channel()
            channel.queue_delete(each)
            channel.exchange_delete(each)
            channel.close()


@pytest.fixture
def targets(targets, settings, monkeypatch, mariadb_url, saas, brokers_up):
    """The root fixture's targets, and one of each kind of this package, configured from the
    environment as a deployment would be (child processes inherit it)."""
    monkeypatch.setenv("FLAMINGOCK_TEST_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("FLAMINGOCK_TEST_RABBITMQ_URL", RABBITMQ_URL)
    monkeypatch.setenv("FLAMINGOCK_TEST_MARIADB_URL", mariadb_url)
    monkeypatch.setenv("FLAMINGOCK_TEST_SAAS_URL", saas.url)
    monkeypatch.setenv("FLAMINGOCK_TEST_SAAS_TOKEN", saas.state.token)
    configured = {
        **targets,
        "flags": {"kind": "redis", "url_env": "FLAMINGOCK_TEST_REDIS_URL"},
        "bus": {"kind": "rabbitmq", "url_env": "FLAMINGOCK_TEST_RABBITMQ_URL"},
        "billing": {"kind": "mysql", "url_env": "FLAMINGOCK_TEST_MARIADB_URL"},
        "api": {"kind": "http", "base_url_env": "FLAMINGOCK_TEST_SAAS_URL", "token_env": "FLAMINGOCK_TEST_SAAS_TOKEN", "timeout": 5, "retries": 2},
    }
    settings.FLAMINGOCK_TARGET_SYSTEMS = configured
    monkeypatch.setenv("FLAMINGOCK_TARGETS_JSON", json.dumps(configured))
    return configured
