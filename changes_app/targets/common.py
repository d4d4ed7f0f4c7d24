"""What the kinds of this package share: configuration read from the environment, and the checks
every multi-step template makes before anything runs."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from audit_app.redaction import register_secret
from changes_app.targets.base import TargetSystem, TargetUnavailable
from changes_app.targets.templates import document_steps

STEP_KEYS = frozenset({"name", "apply", "rollback", "verify"})


def setting_read(system: TargetSystem, key: str, *, secret: bool = False, required: bool = True) -> str:
    """The value of ``key`` in the configuration, else of the environment variable named by ``<key>_env``.

    A secret (or the password inside a URL) is registered with the audit writer before it is used, so
    that no error, log line or entry that quotes it ever shows it.
    """
    value = system.config.get(key) or ""
    variable = system.config.get(f"{key}_env") or ""
    if not value and variable:
        value = os.environ.get(variable, "")
    if not value:
        if not required:
            return ""
        where = f"environment variable {variable!r} is not set" if variable else f"neither {key!r} nor {key + '_env'!r} is configured"
        raise TargetUnavailable(f"target {system.name!r}: {where}")
    if secret:
        register_secret(value)
    if "://" in value:
        register_secret(url_password(value))
    return value


def url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def setting_problems(config: Mapping[str, Any], key: str, *, schemes: tuple[str, ...] = ()) -> list[str]:
    """A target needs ``key`` or ``key_env``; a literal URL must use one of ``schemes``."""
    if not config.get(key) and not config.get(f"{key}_env"):
        return [f"needs {key + '_env'!r} (the environment variable holding it) or {key!r}"]
    value = config.get(key)
    if value and schemes and urlsplit(str(value)).scheme not in schemes:
        return [f"{key!r} must be a URL starting with {' or '.join(s + '://' for s in schemes)}"]
    return []


def number_problems(config: Mapping[str, Any], *keys: str) -> list[str]:
    return [
        f"{key!r} must be a positive number of seconds"
        for key in keys
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], int | float) or config[key] <= 0)
    ]


def steps_problems(document: dict[str, Any], payload_problems: Callable[[str, Any], list[str]]) -> list[tuple[str, str]]:
    """The shape every template of this package shares, then each payload's own problems.

    ``apply``/``rollback``/``verify`` at the top level make one step; ``steps`` is a list of them.
    In a multi-step change every step but the last needs a rollback: it is what compensates the
    step when a later one fails (docs/semantics.md §5).
    """
    if "steps" in document:
        if not isinstance(document["steps"], list) or not document["steps"]:
            return [("steps", "'steps' must be a non-empty list of steps, each with 'apply' (and 'rollback', 'verify')")]
        mixed = sorted(key for key in ("apply", "rollback", "verify") if key in document)
        if mixed:
            return [(mixed[0], f"use either 'steps' or top-level {', '.join(repr(k) for k in mixed)}, not both")]
    steps = document_steps(document)
    many = "steps" in document
    found: list[tuple[str, str]] = []
    for index, step in enumerate(steps, start=1):
        where = "steps" if many else "apply"
        label = f"step {index}: " if many else ""
        if not isinstance(step, dict):
            found.append((where, f"{label}each step must be a mapping with 'apply' (and 'rollback', 'verify')"))
            continue
        unknown = sorted(set(map(str, step)) - STEP_KEYS)
        if unknown:
            found.append((where, f"{label}unknown keys {unknown} (a step has {', '.join(sorted(STEP_KEYS))})"))
        if "name" in step and (not isinstance(step["name"], str) or not step["name"].strip()):
            found.append((where, f"{label}'name' must be text"))
        if "apply" not in step:
            found.append((where, f"{label}missing 'apply'"))
        for key in ("apply", "rollback", "verify"):
            if key in step:
                found.extend((where if many else key, f"{label}{key}: {message}") for message in payload_problems(key, step[key]))
        if many and index < len(steps) and "rollback" not in step:
            found.append((where, f"{label}missing 'rollback': if a later step fails, this one cannot be compensated"))
    return found


def step_label(step: dict[str, Any], index: int) -> str:
    return step.get("name") or f"step {index}"


def flat(text: str, limit: int = 200) -> str:
    words = " ".join(str(text).split())
    return words if len(words) <= limit else words[: limit - 3] + "..."
