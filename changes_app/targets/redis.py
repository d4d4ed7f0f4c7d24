"""Redis as a target system (feature flags, configuration keys), and the ``redis`` YAML template.

Settings: ``{"kind": "redis", "url_env": "REDIS_URL"}`` (or a literal ``url``), optional
``timeout`` (seconds, default 5). Redis has no transaction that can be rolled back, so every change
is non-transactional: STARTED, apply, APPLIED, and compensation by the rollback on failure.

A code change asks for ``redis`` (a ``redis.Redis`` client answering text)::

    def apply(self, redis):
        redis.set("shop:flag:new-checkout", "off")

The template runs Redis commands written as ``redis-cli`` would take them, one per line::

    template: redis
    apply: |
      SET shop:flag:new-checkout on
      HSET shop:config:checkout provider stripe retries 3
    rollback: |
      DEL shop:flag:new-checkout
      HDEL shop:config:checkout provider retries
    verify:
      - command: GET shop:flag:new-checkout
        equals: "on"
      - HEXISTS shop:config:checkout provider

Only the commands listed below are accepted, each with its number of arguments checked before
anything runs. A step's commands are sent in one MULTI/EXEC, so a crash never leaves half a step
behind; Redis does not undo a command that fails at run time (a WRONGTYPE error), so a failed step
may still be partial, which is why the ledger treats Redis as non-transactional.
"""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from audit_app.redaction import redact
from changes_app.definitions import Step, Strategy
from changes_app.targets.base import TargetSystem, TargetUnavailable, TransactionBound, register_target_kind
from changes_app.targets.common import flat, number_problems, setting_problems, setting_read, step_label, steps_problems
from changes_app.targets.templates import ChangeTemplate, document_steps, register_template


@dataclass(frozen=True)
class Arity:
    """How many arguments follow the command name; ``pairs_from`` says where field/value pairs start."""

    least: int
    most: int | None = None
    pairs_from: int | None = None

    def problem(self, arguments: list[str]) -> str:
        count = len(arguments)
        if count < self.least or (self.most is not None and count > self.most):
            wanted = f"{self.least}" if self.most == self.least else f"{self.least} to {self.most}" if self.most else f"at least {self.least}"
            return f"takes {wanted} argument(s), got {count}"
        if self.pairs_from is not None and (count - self.pairs_from) % 2:
            return "takes field/value pairs: one value is missing"
        return ""


#: Commands a template may run to make or undo a change.
WRITE_COMMANDS = {
    "SET": Arity(2, 6),
    "SETNX": Arity(2, 2),
    "MSET": Arity(2, pairs_from=0),
    "DEL": Arity(1),
    "UNLINK": Arity(1),
    "EXPIRE": Arity(2, 3),
    "PERSIST": Arity(1, 1),
    "RENAME": Arity(2, 2),
    "INCR": Arity(1, 1),
    "DECR": Arity(1, 1),
    "INCRBY": Arity(2, 2),
    "DECRBY": Arity(2, 2),
    "HSET": Arity(3, pairs_from=1),
    "HDEL": Arity(2),
    "HINCRBY": Arity(3, 3),
    "SADD": Arity(2),
    "SREM": Arity(2),
    "RPUSH": Arity(2),
    "LPUSH": Arity(2),
    "LREM": Arity(3, 3),
    "ZADD": Arity(3, pairs_from=1),
    "ZREM": Arity(2),
}
#: Commands a ``verify`` expectation may run: they read, never write.
READ_COMMANDS = {
    "GET": Arity(1, 1),
    "MGET": Arity(1),
    "EXISTS": Arity(1),
    "TYPE": Arity(1, 1),
    "TTL": Arity(1, 1),
    "STRLEN": Arity(1, 1),
    "HGET": Arity(2, 2),
    "HMGET": Arity(2),
    "HGETALL": Arity(1, 1),
    "HEXISTS": Arity(2, 2),
    "HLEN": Arity(1, 1),
    "SISMEMBER": Arity(2, 2),
    "SMEMBERS": Arity(1, 1),
    "SCARD": Arity(1, 1),
    "LRANGE": Arity(3, 3),
    "LLEN": Arity(1, 1),
    "LINDEX": Arity(2, 2),
    "ZSCORE": Arity(2, 2),
    "ZCARD": Arity(1, 1),
}


class RedisTarget(TargetSystem):
    """A Redis server by URL; changes get a ``redis.Redis`` client that answers text."""

    kind = "redis"
    # Commands, and MULTI/EXEC sent as one batch: no server transaction stays open between commands.
    transaction_bound = TransactionBound.NO_TRANSACTION
    secret_keys = frozenset({"url", "password"})

    def __init__(self, name, config):
        super().__init__(name, config)
        self._client = None

    @classmethod
    def config_problems(cls, config):
        return setting_problems(config, "url", schemes=("redis", "rediss", "unix")) + number_problems(config, "timeout")

    def dependency_names(self):
        return {"context", "redis"}

    def strategy(self, *, transactional):
        return Strategy.NON_TRANSACTIONAL

    def client(self):
        import redis

        if self._client is None:
            timeout = float(self.config.get("timeout", 5))
            self._client = redis.Redis.from_url(
                setting_read(self, "url"), decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        try:
            self._client.ping()
        except redis.RedisError as error:
            self.close()
            raise TargetUnavailable(f"target {self.name!r} cannot be reached: {redact(str(error))}") from error
        return self._client

    @contextmanager
    def session(self, *, atomic):
        yield {"redis": self.client()}

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


register_target_kind(RedisTarget)


# -- the template ----------------------------------------------------------------------------------


def command_parse(command: Any) -> list[str]:
    """One command as a list of words: ``"SET key 'a value'"`` or ``[SET, key, a value]``."""
    if isinstance(command, str):
        return shlex.split(command)
    if isinstance(command, list) and command:
        for word in command:
            if isinstance(word, bool) or not isinstance(word, str | int | float):
                # YAML reads on/off/yes/no as booleans: a flag value must be quoted to stay text.
                raise ValueError(f"{word!r} is not text or a number (quote on, off, yes, no, true and false)")
        return [str(word) for word in command]
    raise ValueError("a command is a line of text or a list of words")


def commands_parse(payload: Any) -> list[list[str]]:
    """Commands of an ``apply`` or ``rollback``: lines of text, or a list of commands."""
    if isinstance(payload, str):
        lines = [line for line in payload.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return [command_parse(line) for line in lines]
    if isinstance(payload, list):
        return [command_parse(command) for command in payload]
    raise ValueError("must be Redis commands: lines of text, or a list of commands")


def expectations_parse(payload: Any) -> list[tuple[list[str], bool, Any]]:
    """``verify`` as (command, has expected value, expected value) triples."""
    items = payload if isinstance(payload, list) else [payload]
    parsed = []
    for item in items:
        if isinstance(item, str):
            parsed.extend((command, False, None) for command in commands_parse(item))
        elif isinstance(item, dict):
            unknown = sorted(set(item) - {"command", "equals"})
            if unknown or "command" not in item:
                raise ValueError(f"an expectation is a mapping with 'command' and optional 'equals' (got {sorted(item)})")
            parsed.append((command_parse(item["command"]), "equals" in item, item.get("equals")))
        else:
            raise ValueError("an expectation is a read command, or a mapping with 'command' and 'equals'")
    if not parsed:
        raise ValueError("names no expectation")
    return parsed


def command_problem(words: list[str], known: dict[str, Arity]) -> str:
    if not words:
        return "an empty command"
    name = words[0].upper()
    if name not in known:
        return f"unknown or unsupported command {words[0]!r} (supported: {', '.join(sorted(known))})"
    problem = known[name].problem(words[1:])
    return f"{name} {problem}" if problem else ""


def matches(result: Any, expected: Any) -> bool:
    """Whether a Redis answer equals an expectation written in YAML (numbers and text compare as text)."""
    if isinstance(result, set):
        return isinstance(expected, list) and {str(item) for item in expected} == result
    if isinstance(result, dict):
        return isinstance(expected, dict) and {str(k): str(v) for k, v in expected.items()} == result
    if isinstance(result, list):
        return isinstance(expected, list) and len(result) == len(expected) and all(matches(r, e) for r, e in zip(result, expected, strict=True))
    if result is None or expected is None:
        return result is expected
    if isinstance(expected, bool):
        return bool(result) is expected
    return str(result) == str(expected)


class RedisTemplate(ChangeTemplate):
    """Commands to apply, commands to roll back, and read commands with the answers that prove it."""

    name = "redis"

    def problems(self, document, target, *, transactional):
        if target.kind != RedisTarget.kind:
            return [("template", f"the redis template needs a redis target; {target.name!r} is a {target.kind} target")]
        return steps_problems(document, _payload_problems)

    def steps(self, document, target):
        built = []
        for index, step in enumerate(document_steps(document), start=1):
            apply = commands_parse(step["apply"])
            rollback = commands_parse(step["rollback"]) if "rollback" in step else None
            verify = expectations_parse(step["verify"]) if "verify" in step else None
            built.append(
                Step(
                    label=step_label(step, index),
                    apply=_runner(apply),
                    rollback=_runner(rollback) if rollback else None,
                    verify=_prober(verify) if verify else None,
                    preview=flat("; ".join(shlex.join(command) for command in apply)),
                )
            )
        return built


def _payload_problems(key: str, payload: Any) -> list[str]:
    try:
        if key == "verify":
            return [p for command, _, _ in expectations_parse(payload) if (p := command_problem(command, READ_COMMANDS))]
        commands = commands_parse(payload)
    except ValueError as error:
        return [str(error)]
    if not commands:
        return ["names no command"]
    return [problem for command in commands if (problem := command_problem(command, WRITE_COMMANDS))]


def _runner(commands: list[list[str]]):
    def run(dependencies):
        # One MULTI/EXEC: Redis runs the step's commands together, so a crash never splits them.
        pipeline = dependencies["redis"].pipeline(transaction=True)
        for command in commands:
            pipeline.execute_command(*command)
        pipeline.execute(raise_on_error=True)

    return run


def _prober(expectations: list[tuple[list[str], bool, Any]]):
    def probe(dependencies) -> bool:
        client = dependencies["redis"]
        for command, has_expected, expected in expectations:
            result = client.execute_command(*command)
            if command[0].upper() == "SMEMBERS" and isinstance(result, list):
                result = set(result)
            if command[0].upper() == "HGETALL" and isinstance(result, list):
                result = dict(zip(result[::2], result[1::2], strict=True))
            if not (matches(result, expected) if has_expected else bool(result)):
                return False
        return True

    return probe


register_template(RedisTemplate())
