"""Real Celery workers for the distributed-execution tests.

Each test gets its own broker key space on the machine's Redis (a database number, a key prefix
for every key kombu writes and a queue name, see :class:`Broker`), and starts real
``celery -A flamingock_site worker --pool=solo`` processes on it with the test database's
environment. Workers are started, waited for, stopped and ``kill -9``-ed here; the test process
publishes to the same key space with :meth:`Broker.publishing`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent.parent
REDIS_SERVER = os.environ.get("FLAMINGOCK_TEST_REDIS", "redis://127.0.0.1:6379")
#: The Redis database number of the worker tests; the key prefix keeps each test apart inside it.
REDIS_DB = int(os.environ.get("FLAMINGOCK_TEST_REDIS_DB", "3"))


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Broker:
    """One test's key space on the shared Redis: its own key prefix and queue name."""

    def __init__(self, name: str, *, db: int = REDIS_DB):
        self.name = name
        self.url = f"{REDIS_SERVER}/{db}"
        self.keyprefix = f"flk-test:{name}:"
        self.queue = f"flk-{name}"
        self.client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            self.client.ping()
        except redis.RedisError as error:
            raise AssertionError(f"Redis is required at {self.url} (see /work/shared/services.md): {error}") from None

    def env(self) -> dict[str, str]:
        """What a worker or a CLI process needs to use this key space."""
        return {"REDIS_URL": self.url, "FLAMINGOCK_BROKER_KEYPREFIX": self.keyprefix, "FLAMINGOCK_QUEUE": self.queue}

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """Make this process's Celery app publish to this key space and queue (tasks queued by
        ``services.run_queue`` included), then put the app back as it was."""
        from flamingock_site.celery import app

        keys = ("broker_url", "broker_transport_options", "task_default_queue")
        saved = {key: app.conf[key] for key in keys}
        _pools_reset(app)
        app.conf.update(broker_url=self.url, broker_transport_options={"global_keyprefix": self.keyprefix}, task_default_queue=self.queue)
        try:
            yield
        finally:
            _pools_reset(app)
            app.conf.update(saved)

    # -- what the broker holds ----------------------------------------------------------------

    def queued(self) -> int:
        """Messages waiting in the queue (kombu keys carry the prefix)."""
        return self.client.llen(f"{self.keyprefix}{self.queue}")

    def unacked(self) -> int:
        """Messages delivered to a worker and not acknowledged yet."""
        return self.client.hlen(f"{self.keyprefix}unacked")

    def counter(self, key: str) -> int:
        return int(self.client.get(f"{self.keyprefix}{key}") or 0)

    def counters(self, prefix: str) -> dict[str, int]:
        found = {}
        for key in self.client.scan_iter(match=f"{self.keyprefix}{prefix}*", count=1000):
            found[key.decode()[len(self.keyprefix) + len(prefix) :]] = int(self.client.get(key) or 0)
        return found

    def cleanup(self, *lock_names: str) -> None:
        """Delete every key of this test: kombu's, the counters, and the pipeline locks."""
        keys = list(self.client.scan_iter(match=f"{self.keyprefix}*", count=1000))
        for name in lock_names:
            keys += [f"flamingock:lock:{name}", f"flamingock:lock:{name}:holder"]
        if keys:
            self.client.delete(*keys)
        self.client.close()


def _pools_reset(app) -> None:
    # kombu keeps one pool per broker URL and options for the process: drop the app's references
    # to it, never close it (the next use of the same broker takes it again).
    app._pool = None
    amqp = app.__dict__.get("amqp")  # a cached property: present once something was published
    if amqp is not None:
        amqp._producer_pool = None


class Worker:
    """``celery -A flamingock_site worker --pool=solo -n <name>``: one real process, its log in a file."""

    def __init__(self, name: str, *, env: dict[str, str], log_dir: Path):
        self.name = name
        self.env = env
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name.replace('@', '_at_')}.log"
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.exited_at: float | None = None

    def start(self) -> Worker:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "flamingock_site",
            "worker",
            "--pool=solo",
            "-n",
            self.name,
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL)
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            if self.process is not None and self.exited_at is None:
                self.exited_at = time.monotonic()
            return False
        return True

    @property
    def ready(self) -> bool:
        if f"{self.name} ready." in self.log:
            return True
        if not self.alive():
            raise AssertionError(f"worker {self.name} exited ({self.process.returncode}) before it was ready:\n{self.log[-4000:]}")
        return False

    def received(self, task_id: str) -> int:
        """How many times this worker received the task (a redelivery counts again)."""
        return self.log.count(f"Task flamingock.run_execute[{task_id}] received")

    def finished(self, task_id: str) -> list[str]:
        """The return values (run statuses) this worker logged for the task, one per execution."""
        marker = f"Task flamingock.run_execute[{task_id}] succeeded in "
        return [line.rsplit(": ", 1)[-1].strip().strip("'") for line in self.log.splitlines() if marker in line]

    def kill(self) -> None:
        """``kill -9``, from outside."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout=timeout)
        self.alive()
        return code

    def stop(self, timeout: float = 15) -> None:
        """Warm shutdown; ``kill -9`` if it does not stop in time (a paused worker is resumed first)."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGCONT)
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.alive()


def workers_start(names: Iterable[str], *, env_for: Callable[[str], dict[str, str]], log_dir: Path, timeout: float = 60) -> list[Worker]:
    """Start one worker per name at once and wait until every one is ready to consume."""
    workers = [Worker(name, env=env_for(name), log_dir=log_dir).start() for name in names]
    try:
        wait_for(lambda: all(worker.ready for worker in workers), timeout=timeout, interval=0.1, what="workers ready")
    except BaseException:
        workers_stop(workers)
        raise
    return workers


def workers_stop(workers: Iterable[Worker], *, graceful: bool = True) -> None:
    """Warm shutdown of every worker at once (``kill -9`` when not ``graceful``: idle workers of a
    finished trial have nothing to lose)."""
    workers = list(workers)
    for worker in workers:
        if worker.alive():
            os.kill(worker.pid, signal.SIGCONT)
            os.kill(worker.pid, signal.SIGTERM if graceful else signal.SIGKILL)
    deadline = time.monotonic() + 15
    for worker in workers:
        if worker.process is None:
            continue
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
        worker.alive()
