"""RabbitMQ as a target system (exchanges, queues, bindings), and the ``rabbitmq`` YAML template.

Settings: ``{"kind": "rabbitmq", "url_env": "FLAMINGOCK_RABBITMQ_URL"}`` with an AMQP URL
(``amqp://user:password@host:5672/vhost``), optional ``timeout`` (seconds, default 10). The
password is registered as a secret and never shown. A broker has no transaction that covers
declarations, so every change is non-transactional, compensated by its rollback on failure.

A code change asks for ``rabbitmq``, a :class:`RabbitAdmin` (declare, delete, bind, exists...).

The template lists operations, each a mapping whose one verb key names the object::

    template: rabbitmq
    steps:
      - name: order events exchange
        apply:
          declare_exchange: shop.orders
          type: topic
        rollback:
          delete_exchange: shop.orders
        verify: declared
      - name: billing queue
        apply:
          declare_queue: shop.orders.billing
          arguments: {x-message-ttl: 86400000}
        rollback:
          delete_queue: shop.orders.billing
        verify: declared
      - name: billing binding
        apply:
          bind_queue: shop.orders.billing
          exchange: shop.orders
          routing_key: order.*
        rollback:
          unbind_queue: shop.orders.billing
          exchange: shop.orders
          routing_key: order.*

Exchanges and queues are durable and not auto-deleted unless a declaration says otherwise.
``verify: declared`` (or a list of ``declare_exchange``/``declare_queue`` operations) checks that
each object exists *with the declared type, flags and arguments*: a passive declare proves it
exists, then a declare with the same values, which the broker accepts only if they are equivalent
(it refuses any difference with PRECONDITION_FAILED). AMQP has no way to ask whether a binding
exists without creating it, so a binding cannot be verified: validation says so.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from audit_app.redaction import redact
from changes_app.definitions import Step, Strategy
from changes_app.targets.base import TargetSystem, TargetUnavailable, TransactionBound, register_target_kind
from changes_app.targets.common import flat, number_problems, setting_problems, setting_read, step_label, steps_problems
from changes_app.targets.templates import ChangeTemplate, document_steps, register_template

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
BOOLEAN = "true or false"
#: Each verb and the options it takes, with the type each option must have.
OPERATIONS: dict[str, dict[str, str]] = {
    "declare_exchange": {"type": "exchange type", "durable": BOOLEAN, "auto_delete": BOOLEAN, "arguments": "mapping"},
    "delete_exchange": {"if_unused": BOOLEAN},
    "declare_queue": {"durable": BOOLEAN, "auto_delete": BOOLEAN, "exclusive": BOOLEAN, "arguments": "mapping"},
    "delete_queue": {"if_unused": BOOLEAN, "if_empty": BOOLEAN},
    "bind_queue": {"exchange": "name", "routing_key": "text", "arguments": "mapping"},
    "unbind_queue": {"exchange": "name", "routing_key": "text", "arguments": "mapping"},
    "bind_exchange": {"source": "name", "routing_key": "text", "arguments": "mapping"},
    "unbind_exchange": {"source": "name", "routing_key": "text", "arguments": "mapping"},
}
REQUIRED = {"bind_queue": ("exchange",), "unbind_queue": ("exchange",), "bind_exchange": ("source",), "unbind_exchange": ("source",)}
VERIFIABLE = ("declare_exchange", "declare_queue")


class RabbitAdmin:
    """Declarations on one broker connection; every operation uses a fresh channel, because the
    broker closes a channel on any error."""

    def __init__(self, connection):
        self.connection = connection

    @contextmanager
    def channel(self):
        channel = self.connection.channel()
        try:
            yield channel
        finally:
            if channel.is_open:
                channel.close()

    def declare_exchange(self, name: str, type: str = "direct", *, durable=True, auto_delete=False, arguments=None) -> None:
        with self.channel() as channel:
            channel.exchange_declare(name, type, durable=durable, auto_delete=auto_delete, arguments=arguments or {})

    def delete_exchange(self, name: str, *, if_unused=False) -> None:
        with self.channel() as channel:
            channel.exchange_delete(name, if_unused=if_unused)

    def declare_queue(self, name: str, *, durable=True, auto_delete=False, exclusive=False, arguments=None) -> None:
        with self.channel() as channel:
            channel.queue_declare(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments or {})

    def delete_queue(self, name: str, *, if_unused=False, if_empty=False) -> None:
        with self.channel() as channel:
            channel.queue_delete(name, if_unused=if_unused, if_empty=if_empty)

    def bind_queue(self, queue: str, *, exchange: str, routing_key: str = "", arguments=None) -> None:
        with self.channel() as channel:
            channel.queue_bind(queue, exchange, routing_key, arguments=arguments or {})

    def unbind_queue(self, queue: str, *, exchange: str, routing_key: str = "", arguments=None) -> None:
        with self.channel() as channel:
            channel.queue_unbind(queue, exchange, routing_key, arguments=arguments or {})

    def bind_exchange(self, destination: str, *, source: str, routing_key: str = "", arguments=None) -> None:
        with self.channel() as channel:
            channel.exchange_bind(destination, source, routing_key, arguments=arguments or {})

    def unbind_exchange(self, destination: str, *, source: str, routing_key: str = "", arguments=None) -> None:
        with self.channel() as channel:
            channel.exchange_unbind(destination, source, routing_key, arguments=arguments or {})

    def exchange_exists(self, name: str, **declared) -> bool:
        """Whether the exchange exists and, given its declared values, whether they are the ones it has."""
        return self._exists(
            lambda channel: channel.exchange_declare(name, declared.get("type", "direct"), passive=True), self.declare_exchange, name, declared
        )

    def queue_exists(self, name: str, **declared) -> bool:
        return self._exists(lambda channel: channel.queue_declare(name, passive=True), self.declare_queue, name, declared)

    def _exists(self, passive, declare, name: str, declared: dict[str, Any]) -> bool:
        from amqp.exceptions import NotFound, PreconditionFailed

        try:
            with self.channel() as channel:
                passive(channel)
        except NotFound:
            return False
        if not declared:
            return True
        try:
            # It exists: a declare with the same values changes nothing, and any difference is refused.
            declare(name, **declared)
        except PreconditionFailed:
            return False
        return True


class RabbitMQTarget(TargetSystem):
    """A RabbitMQ virtual host by AMQP URL; changes get a :class:`RabbitAdmin` as ``rabbitmq``."""

    kind = "rabbitmq"
    # Declarations and publishes are single commands: no server transaction stays open.
    transaction_bound = TransactionBound.NO_TRANSACTION
    secret_keys = frozenset({"url", "password"})

    def __init__(self, name, config):
        super().__init__(name, config)
        self._connection = None

    @classmethod
    def config_problems(cls, config):
        return setting_problems(config, "url", schemes=("amqp", "amqps", "pyamqp")) + number_problems(config, "timeout")

    def dependency_names(self):
        return {"context", "rabbitmq"}

    def strategy(self, *, transactional):
        return Strategy.NON_TRANSACTIONAL

    def admin(self) -> RabbitAdmin:
        import kombu

        if self._connection is None or not self._connection.connected:
            self.close()
            url = setting_read(self, "url")
            connection = kombu.Connection(url, connect_timeout=float(self.config.get("timeout", 10)))
            try:
                connection.connect()
            except Exception as error:  # kombu raises the transport's own errors (socket, AMQP access refused)
                raise TargetUnavailable(f"target {self.name!r} cannot be reached: {redact(str(error))}") from error
            self._connection = connection
        return RabbitAdmin(self._connection)

    @contextmanager
    def session(self, *, atomic):
        yield {"rabbitmq": self.admin()}

    def close(self):
        if self._connection is not None:
            try:
                self._connection.release()
            finally:
                self._connection = None


register_target_kind(RabbitMQTarget)


# -- the template ----------------------------------------------------------------------------------


def operations_parse(payload: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(verb, object name, options) for each operation of an ``apply`` or ``rollback``."""
    items = payload if isinstance(payload, list) else [payload]
    parsed = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"an operation is a mapping such as {{declare_queue: NAME, durable: true}} (got {item!r})")
        verbs = [key for key in item if key in OPERATIONS]
        if len(verbs) != 1:
            raise ValueError(f"an operation names exactly one of {', '.join(OPERATIONS)} (got {', '.join(map(str, item)) or 'nothing'})")
        verb = verbs[0]
        parsed.append((verb, item[verb], {key: value for key, value in item.items() if key != verb}))
    if not parsed:
        raise ValueError("names no operation")
    return parsed


def operation_problems(verb: str, name: Any, options: dict[str, Any]) -> list[str]:
    found = []
    if not isinstance(name, str) or not name.strip():
        found.append(f"{verb}: the object's name must be text")
    allowed = OPERATIONS[verb]
    for key, value in options.items():
        kind = allowed.get(key)
        if kind is None:
            found.append(f"{verb} {name}: unknown option {key!r} (it takes {', '.join(allowed) or 'none'})")
        elif kind == BOOLEAN and not isinstance(value, bool):
            found.append(f"{verb} {name}: {key!r} must be {BOOLEAN}")
        elif kind == "mapping" and not isinstance(value, dict):
            found.append(f"{verb} {name}: {key!r} must be a mapping of argument names to values")
        elif kind in ("name", "text") and not isinstance(value, str):
            found.append(f"{verb} {name}: {key!r} must be text")
        elif kind == "exchange type" and not (isinstance(value, str) and (value in EXCHANGE_TYPES or value.startswith("x-"))):
            found.append(f"{verb} {name}: 'type' must be one of {', '.join(EXCHANGE_TYPES)} or a plugin's x- type (got {value!r})")
    for key in REQUIRED.get(verb, ()):
        if key not in options:
            found.append(f"{verb} {name}: missing {key!r}")
    return found


def _declared(options: dict[str, Any], verb: str) -> dict[str, Any]:
    """The values a declaration sets, defaults included, as :class:`RabbitAdmin` takes them."""
    values = {"durable": options.get("durable", True), "auto_delete": options.get("auto_delete", False), "arguments": options.get("arguments") or {}}
    if verb == "declare_exchange":
        values["type"] = options.get("type", "direct")
    else:
        values["exclusive"] = options.get("exclusive", False)
    return values


def _verify_operations(step: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    if step["verify"] == "declared":
        return operations_parse(step["apply"])
    return operations_parse(step["verify"])


class RabbitMQTemplate(ChangeTemplate):
    """Declarations to apply, deletions to roll back, and a verify that the declared objects exist as declared."""

    name = "rabbitmq"

    def problems(self, document, target, *, transactional):
        if target.kind != RabbitMQTarget.kind:
            return [("template", f"the rabbitmq template needs a rabbitmq target; {target.name!r} is a {target.kind} target")]
        found = steps_problems(document, _payload_problems)
        if found:
            return found
        many = "steps" in document
        for index, step in enumerate(document_steps(document), start=1):
            if "verify" not in step:
                continue
            unverifiable = [f"{verb} {name}" for verb, name, _ in _verify_operations(step) if verb not in VERIFIABLE]
            if unverifiable:
                found.append(
                    (
                        "steps" if many else "verify",
                        f"{'step ' + str(index) + ': ' if many else ''}verify cannot prove {', '.join(unverifiable)}: AMQP can check that an "
                        "exchange or a queue exists, not a binding; leave verify out of a step that binds",
                    )
                )
        return found

    def steps(self, document, target):
        built = []
        for index, step in enumerate(document_steps(document), start=1):
            apply = operations_parse(step["apply"])
            rollback = operations_parse(step["rollback"]) if "rollback" in step else None
            built.append(
                Step(
                    label=step_label(step, index),
                    apply=_runner(apply),
                    rollback=_runner(rollback) if rollback else None,
                    verify=_prober(_verify_operations(step)) if "verify" in step else None,
                    preview=flat("; ".join(_describe(verb, name, options) for verb, name, options in apply)),
                )
            )
        return built


def _payload_problems(key: str, payload: Any) -> list[str]:
    if key == "verify" and payload == "declared":
        return []
    try:
        operations = operations_parse(payload)
    except ValueError as error:
        return [str(error) + ("; or 'declared'" if key == "verify" else "")]
    return [problem for verb, name, options in operations for problem in operation_problems(verb, name, options)]


def _describe(verb: str, name: str, options: dict[str, Any]) -> str:
    words = verb.replace("_", " ")
    if verb.startswith("declare"):
        values = _declared(options, verb)
        flags = [values.get("type", ""), "durable" if values["durable"] else "transient", "auto-delete" if values["auto_delete"] else ""]
        flags += [f"{k}={v}" for k, v in values["arguments"].items()]
        return f"{words} {name!r} ({', '.join(f for f in flags if f)})"
    if "bind" in verb:
        other = options.get("exchange") or options.get("source")
        return f"{words} {name!r} {'to' if verb.startswith('bind') else 'from'} {other!r} routing key {options.get('routing_key', '')!r}"
    return f"{words} {name!r}"


def _call(admin: RabbitAdmin, verb: str, name: str, options: dict[str, Any]) -> None:
    if verb.startswith("declare"):
        getattr(admin, verb)(name, **_declared(options, verb))
    else:
        getattr(admin, verb)(name, **options)


def _runner(operations):
    def run(dependencies):
        admin = dependencies["rabbitmq"]
        for verb, name, options in operations:
            _call(admin, verb, name, options)

    return run


def _prober(operations):
    def probe(dependencies) -> bool:
        admin = dependencies["rabbitmq"]
        for verb, name, options in operations:
            exists = admin.exchange_exists if verb == "declare_exchange" else admin.queue_exists
            if not exists(name, **_declared(options, verb)):
                return False
        return True

    return probe


register_template(RabbitMQTemplate())
