"""Change-as-code: the base class authors subclass, and the loaded form the engine runs.

A Python change is a module named like a Django migration (``0007_add_user_status.py``) holding
one subclass of :class:`Change`::

    class AddUserStatus(Change):
        id = "add-user-status"
        author = "platform-team"
        target = "app-db"

        def apply(self, cursor):
            cursor.execute("ALTER TABLE users ADD COLUMN status varchar(16)")

        def rollback(self, cursor):
            cursor.execute("ALTER TABLE users DROP COLUMN status")

Dependencies are handed over by parameter name, from what the change's target system offers (a
SQL target offers ``cursor``, ``connection`` and ``using``; every target offers ``context``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class Recovery(StrEnum):
    MANUAL_INTERVENTION = "MANUAL_INTERVENTION"
    ALWAYS_RETRY = "ALWAYS_RETRY"


class Strategy(StrEnum):
    SHARED_TRANSACTION = "SHARED_TRANSACTION"
    MARKER = "MARKER"
    NON_TRANSACTIONAL = "NON_TRANSACTIONAL"


class Change:
    """Subclass this in a file of a ``changes`` package; ``apply`` is required."""

    id: ClassVar[str]
    author: ClassVar[str]
    target: ClassVar[str]
    #: ``None`` takes the target's default (transactional where the target supports it).
    transactional: ClassVar[bool | None] = None
    recovery: ClassVar[str] = Recovery.MANUAL_INTERVENTION
    description: ClassVar[str] = ""
    #: Environments where the change may run; ``None`` means everywhere.
    environments: ClassVar[list[str] | None] = None
    #: Optional; must agree with the file name prefix.
    order: ClassVar[str | None] = None


def call_with(function: Callable, dependencies: dict[str, Any]) -> Any:
    """Call ``function`` with the dependencies its parameters name."""
    return function(**{name: dependencies[name] for name in parameter_names(function)})


def parameter_names(function: Callable) -> list[str]:
    """The required parameters of ``function`` (bound methods without ``self``).

    Read from the code object, which costs far less than ``inspect.signature`` and is cached on
    it: discovery asks for every method of every change, and each apply asks again.
    """
    code = getattr(function, "__code__", None)
    if code is None:
        return [
            parameter.name
            for parameter in inspect.signature(function).parameters.values()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) and parameter.default is parameter.empty
        ]
    names = _PARAMETERS.get(code)
    if names is None:
        positional = list(code.co_varnames[: code.co_argcount])
        keyword_only = list(code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount])
        defaults = len(getattr(function, "__defaults__", None) or ())
        kwdefaults = getattr(function, "__kwdefaults__", None) or {}
        required = positional[: len(positional) - defaults] + [name for name in keyword_only if name not in kwdefaults]
        names = _PARAMETERS[code] = required
    if inspect.ismethod(function) and names and names[0] == code.co_varnames[0]:
        return names[1:]
    return names


_PARAMETERS: dict[Any, list[str]] = {}


@dataclass
class Step:
    """One unit of apply/rollback/verify, each a callable taking the target's dependencies."""

    label: str
    apply: Callable[[dict[str, Any]], Any]
    rollback: Callable[[dict[str, Any]], Any] | None = None
    verify: Callable[[dict[str, Any]], Any] | None = None
    #: A code change is one step whose own rollback compensates its own failure.
    compensates_own_failure: bool = False
    #: What the step does, shown in plans and the audit trail (e.g. the SQL statements).
    preview: str = ""


@dataclass
class ChangeDefinition:
    """A change as discovered: declared fields, source, checksum and executable steps."""

    id: str
    stage: str
    order: str
    author: str
    target: str
    transactional: bool
    recovery: Recovery
    description: str
    environments: list[str] | None
    kind: str  # "python" or "template"
    template: str
    path: str
    line: int
    source: str
    checksum: str
    steps: list[Step] = field(default_factory=list)

    @property
    def has_rollback(self) -> bool:
        return bool(self.steps) and all(step.rollback is not None for step in self.steps)

    @property
    def has_verify(self) -> bool:
        return bool(self.steps) and all(step.verify is not None for step in self.steps)

    def applies_in(self, environment: str) -> bool:
        return self.environments is None or environment in self.environments

    def verify(self, dependencies: dict[str, Any]) -> bool:
        """True only if every step's probe proves its effect present."""
        return all(bool(step.verify(dependencies)) for step in self.steps)

    def __str__(self):
        return f"{self.stage}:{self.order} {self.id}"


def code_steps(instance: Change) -> list[Step]:
    """The single step of a Python change, its methods bound with dependency injection."""
    cls = type(instance)

    def bound(name: str):
        method = getattr(instance, name, None)
        if method is None or not callable(method):
            return None
        return lambda deps: call_with(method, deps)

    return [
        Step(
            label=cls.__name__,
            apply=bound("apply"),
            rollback=bound("rollback"),
            verify=bound("verify"),
            compensates_own_failure=True,
            preview=f"{cls.__module__}.{cls.__qualname__}",
        )
    ]
