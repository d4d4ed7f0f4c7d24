"""Declarative YAML changes: one registry of templates, and the built-in ``sql`` template.

A template turns the payload of a YAML change (``apply``, ``rollback``, ``verify`` or ordered
``steps``) into executable :class:`~changes_app.definitions.Step` objects for a target system, and
reports what is wrong with it before anything runs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, ClassVar

import sqlparse
from django.core.exceptions import ImproperlyConfigured

from changes_app.definitions import Step
from changes_app.targets.base import TargetSystem

PAYLOAD_KEYS = ("apply", "rollback", "verify", "steps")


class ChangeTemplate:
    name: ClassVar[str] = ""

    def problems(self, document: dict[str, Any], target: TargetSystem, *, transactional: bool) -> list[tuple[str, str]]:
        """(key, message) pairs: everything wrong with this document for this target."""
        return []

    def steps(self, document: dict[str, Any], target: TargetSystem) -> list[Step]:
        raise NotImplementedError

    def transactional_inferred(self, document: dict[str, Any], target: TargetSystem) -> bool | None:
        """What the document implies when it does not declare ``transactional`` (``None``: the target's default)."""
        return None


def document_steps(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The payload as a list of steps: ``steps`` as written, or the top level as one step."""
    if "steps" in document:
        return list(document["steps"] or [])
    return [{key: document[key] for key in ("apply", "rollback", "verify") if key in document}]


# Statements that cannot run inside a transaction block, by dialect.
NON_TRANSACTIONAL = {
    "postgresql": re.compile(
        r"^\s*(create\s+(unique\s+)?index\s+concurrently|drop\s+index\s+concurrently|reindex\b.*\bconcurrently|"
        r"vacuum\b|create\s+database\b|drop\s+database\b|alter\s+system\b|create\s+tablespace\b|drop\s+tablespace\b)",
        re.IGNORECASE | re.DOTALL,
    ),
    "sqlite": re.compile(r"^\s*vacuum\b", re.IGNORECASE),
    # MySQL and MariaDB commit implicitly around DDL.
    "mysql": re.compile(r"^\s*(create|alter|drop|rename|truncate)\b", re.IGNORECASE),
}


def split_statements(sql: str, dialect: str) -> list[str]:
    """Split a script into statements, honouring quotes, comments, dollar quoting and, for MySQL,
    ``DELIMITER`` lines."""
    return list(_split_cached(sql, dialect))


@lru_cache(maxsize=32)
def _split_cached(sql: str, dialect: str) -> tuple[str, ...]:
    # Validation and the steps split the same script up to three times: once is enough.
    if dialect == "mysql" and re.search(r"^\s*DELIMITER\s", sql, re.IGNORECASE | re.MULTILINE):
        return tuple(_split_mysql_delimiters(sql))
    return tuple(_split_plain(sql))


def _split_plain(sql: str) -> list[str]:
    fast = _split_simple(sql)
    if fast is not None:
        return fast
    statements = []
    for statement in (statement.strip() for statement in sqlparse.split(sql)):
        # A statement that starts with neither a comment nor ";" has code left once comments go.
        if statement and (statement[0] not in "-/#;" or sqlparse.format(statement, strip_comments=True).strip().rstrip(";").strip()):
            statements.append(statement)
    return statements


#: One token of a script: whitespace, a comment, a quoted string or identifier, ``;``, a parenthesis, a
#: word, or any other single character.
_TOKEN = re.compile(
    r"""(?P<newline>\r\n|\r|\n) | (?P<space>[^\S\r\n]+)
    | (?P<comment>--[^\r\n]*(?:\r\n|\r|\n|$) | /\*.*?\*/)
    | (?P<quoted>'(?:[^']|'')*' | "(?:[^"]|"")*" | `(?:[^`]|``)*`)
    | (?P<semicolon>;) | (?P<open>\() | (?P<close>\))
    | (?P<word>\w+)
    | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
#: Words that open or close sqlparse's blocks (``BEGIN ... END``, ``DECLARE``) or split on their own (``GO``).
_BLOCK_WORDS = frozenset({"BEGIN", "END", "DECLARE", "GO"})
#: Characters that sqlparse lexes in ways the simple splitter does not: dollar quoting, ``#`` comments, ``%(name)s``,
#: backslash escapes, ``[bracketed]`` names; and a quote or ``/*`` left over from an unterminated string or comment.
_UNSURE = frozenset("$#%['\"`/")
#: Operator characters that sqlparse joins with a following ``--`` or ``/*`` into one operator.
_OPERATOR = frozenset("+/@#%^&|-")


def _split_simple(sql: str) -> list[str] | None:
    """sqlparse's split, done in one linear pass for scripts without blocks (sqlparse takes about
    10 µs a byte, and its comment stripping five times that). ``None`` when the script holds anything
    the pass cannot be sure to split exactly as sqlparse does (``BEGIN``/``END``/``DECLARE``/``GO``,
    dollar quoting, ``#`` comments, backslashes, brackets, comment hints, unterminated quotes or
    comments): sqlparse splits those. Like ``_split_plain``, it drops statements that hold only
    comments and semicolons."""
    if "\\" in sql:  # sqlparse reads a backslash as escaping a quote
        return None
    statements: list[str] = []
    start, level, ended, has_code = 0, 0, False, False
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if ended and not (kind == "space" or kind == "comment" and match.group().startswith("--")):
            # sqlparse ends a statement at the first token after its ";" that is neither whitespace on
            # the same line nor a "--" comment (which takes its line end with it).
            if has_code:
                statements.append(sql[start : match.start()].strip())
            start, level, ended, has_code = match.start(), 0, False, False
        if kind == "semicolon":
            ended = ended or level <= 0
        elif kind == "comment":
            at = match.start()
            if match.group()[2:3] == "+" or (at and sql[at - 1] in _OPERATOR):
                return None
        elif kind in ("space", "newline"):
            continue
        else:
            if kind == "open":
                level += 1
            elif kind == "close":
                level -= 1
            elif kind == "word" and (match.group().upper() in _BLOCK_WORDS or match.group()[0].isdigit() and not match.group().isdigit()):
                return None
            elif kind == "other" and match.group() in _UNSURE and (match.group() != "/" or sql[match.end() : match.end() + 1] == "*"):
                return None
            has_code = True
    if has_code:
        statements.append(sql[start:].strip())
    return statements


def _split_mysql_delimiters(sql: str) -> list[str]:
    statements, buffer, delimiter = [], [], ";"
    for line in sql.splitlines():
        match = re.match(r"^\s*DELIMITER\s+(\S+)\s*$", line, re.IGNORECASE)
        if match:
            if delimiter == ";":
                statements.extend(_split_plain("\n".join(buffer)))
                buffer = []
            delimiter = match.group(1)
            continue
        buffer.append(line)
        if delimiter == ";":
            # Under the default delimiter, split like any script: quotes, comments, several per line.
            continue
        joined = "\n".join(buffer).rstrip()
        if joined.endswith(delimiter):
            statement = joined[: -len(delimiter)].strip()
            if statement:
                statements.append(statement)
            buffer = []
    rest = "\n".join(buffer).strip()
    if delimiter == ";":
        statements.extend(_split_plain(rest))
    elif rest:
        statements.append(rest)
    return statements


def _statement_label(statement: str) -> str:
    words = " ".join(statement.split())
    return words if len(words) <= 60 else words[:57] + "..."


class SqlTemplate(ChangeTemplate):
    """``apply``/``rollback`` scripts and a ``verify`` query whose first column must be truthy."""

    name = "sql"

    def problems(self, document, target, *, transactional):
        if not target.dialect:
            return [("template", f"the sql template needs a SQL target; {target.name!r} is a {target.kind} target")]
        found = []
        steps = document_steps(document)
        if "steps" in document and (not isinstance(document["steps"], list) or not steps):
            return [("steps", "'steps' must be a non-empty list")]
        for index, step in enumerate(steps, start=1):
            where = f"steps[{index}]" if "steps" in document else "apply"
            if not isinstance(step, dict):
                found.append((where, "each step must be a mapping with 'apply' (and 'rollback', 'verify')"))
                continue
            unknown = set(step) - {"apply", "rollback", "verify", "name"}
            if unknown:
                found.append((where, f"unknown keys {sorted(unknown)}"))
            for key in ("apply", "rollback", "verify"):
                if key in step and not isinstance(step[key], str):
                    found.append((where, f"'{key}' must be SQL text"))
            if not isinstance(step.get("apply"), str) or not split_statements(step["apply"], target.dialect):
                found.append((where, "missing 'apply' SQL"))
                continue
            if transactional:
                pattern = NON_TRANSACTIONAL.get(target.dialect)
                for statement in split_statements(step["apply"], target.dialect):
                    if pattern and pattern.search(statement):
                        found.append(
                            (
                                where,
                                f"{_statement_label(statement)!r} cannot run inside a transaction on "
                                f"{target.dialect}: declare 'transactional: false'",
                            )
                        )
        return found

    def transactional_inferred(self, document, target):
        # MySQL and MariaDB commit implicitly around DDL: a change holding DDL cannot be transactional there.
        if target.dialect != "mysql":
            return None
        pattern = NON_TRANSACTIONAL["mysql"]
        for step in document_steps(document):
            scripts = [step.get(key) for key in ("apply", "rollback")] if isinstance(step, dict) else []
            for script in scripts:
                if isinstance(script, str) and any(pattern.search(statement) for statement in split_statements(script, "mysql")):
                    return False
        return None

    def steps(self, document, target):
        dialect = target.dialect
        built = []
        for index, step in enumerate(document_steps(document), start=1):
            apply_sql = split_statements(step["apply"], dialect)
            rollback_sql = split_statements(step["rollback"], dialect) if step.get("rollback") else None
            verify_sql = step.get("verify")
            built.append(
                Step(
                    label=step.get("name") or f"step {index}",
                    apply=_executor(apply_sql),
                    rollback=_executor(rollback_sql) if rollback_sql else None,
                    verify=_prober(verify_sql) if verify_sql else None,
                    preview=";\n".join(apply_sql),
                )
            )
        return built


def _executor(statements: list[str]):
    def run(dependencies):
        cursor = dependencies["cursor"]
        for statement in statements:
            cursor.execute(statement)

    return run


def _prober(query: str):
    def probe(dependencies) -> bool:
        cursor = dependencies["cursor"]
        cursor.execute(query)
        row = cursor.fetchone()
        return bool(row and row[0])

    return probe


_templates: dict[str, ChangeTemplate] = {}


def register_template(template: ChangeTemplate) -> ChangeTemplate:
    existing = _templates.get(template.name)
    if existing is not None and type(existing) is not type(template):
        raise ImproperlyConfigured(f"template {template.name!r} is already registered")
    _templates[template.name] = template
    return template


def templates() -> dict[str, ChangeTemplate]:
    return dict(_templates)


register_template(SqlTemplate())
