"""Checksums of change sources (docs/semantics.md §2): stable across line endings, trailing whitespace,
trailing blank lines and YAML style; changed by any real edit; fixed across product upgrades.

The golden values below are the contract with every ledger already written: if a change of the
normalisation breaks them, every applied change would show as drifted after the upgrade.
"""

import hashlib

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changes_app.pipeline.checksums import canonical_document, checksum_document, checksum_text

PYTHON_CHANGE = '''"""Add a status column to users."""

from changes_app.definitions import Change


class AddUserStatus(Change):
    id = "add-user-status"
    author = "platform-team"
    target = "app-db"

    def apply(self, cursor):
        cursor.execute("ALTER TABLE users ADD COLUMN status varchar(16)")

    def rollback(self, cursor):
        cursor.execute("ALTER TABLE users DROP COLUMN status")
'''
PYTHON_GOLDEN = "1aec8ca8af5687a683dc589af72ee138ac2bc2603470d15007248dd3253b08c6"

YAML_CHANGE = """id: add-orders-index
author: platform-team
target: app-db
template: sql
recovery: MANUAL_INTERVENTION
environments: [dev, prod]
steps:
  - name: table
    apply: |
      CREATE TABLE orders (
        id integer PRIMARY KEY,
        total numeric(12, 2)
      );
    rollback: DROP TABLE orders
  - apply: CREATE INDEX orders_total ON orders (total)
    rollback: DROP INDEX orders_total
    verify: SELECT 1
"""
YAML_CANONICAL = (
    '{"author":"platform-team","environments":["dev","prod"],"id":"add-orders-index","recovery":"MANUAL_INTERVENTION",'
    '"steps":[{"apply":"CREATE TABLE orders (\\n  id integer PRIMARY KEY,\\n  total numeric(12, 2)\\n);","name":"table",'
    '"rollback":"DROP TABLE orders"},{"apply":"CREATE INDEX orders_total ON orders (total)","rollback":"DROP INDEX orders_total",'
    '"verify":"SELECT 1"}],"target":"app-db","template":"sql"}'
)
YAML_GOLDEN = "3d6b453011a7a47967df915c1868ee27bfbd28744e9ee4ec242f00332ef8cfe2"


def yaml_checksum(text: str) -> str:
    """The checksum of a YAML change as discovery computes it: of the parsed document."""
    return checksum_document(yaml.safe_load(text))


def with_line_endings(text: str, ending: str) -> str:
    return text.replace("\n", ending)


def with_trailing_whitespace(text: str, padding: str = " \t ") -> str:
    return "\n".join(line + padding if line else line for line in text.split("\n"))


# -- golden values ---------------------------------------------------------------------------------


def test_python_checksum_is_the_pinned_sha256_of_the_normalised_source():
    assert checksum_text(PYTHON_CHANGE) == PYTHON_GOLDEN
    # The source above is already normal: its checksum is the plain sha256 of its UTF-8 bytes.
    assert hashlib.sha256(PYTHON_CHANGE.encode("utf-8")).hexdigest() == PYTHON_GOLDEN


def test_yaml_checksum_is_the_pinned_sha256_of_the_canonical_document():
    assert canonical_document(yaml.safe_load(YAML_CHANGE)) == YAML_CANONICAL
    assert yaml_checksum(YAML_CHANGE) == YAML_GOLDEN
    assert hashlib.sha256(YAML_CANONICAL.encode("utf-8")).hexdigest() == YAML_GOLDEN


def test_discovered_changes_carry_the_pinned_checksums(make_pipeline):
    pipeline = make_pipeline({"main": {"0001_status.py": PYTHON_CHANGE, "0002_orders.yaml": YAML_CHANGE}})
    assert pipeline.valid, pipeline.problems
    assert pipeline.by_id["add-user-status"].checksum == PYTHON_GOLDEN
    assert pipeline.by_id["add-orders-index"].checksum == YAML_GOLDEN


def test_discovered_changes_keep_their_checksums_with_crlf_and_trailing_whitespace(make_pipeline):
    def untidy(text, padding):
        return with_line_endings(with_trailing_whitespace(text, padding), "\r\n") + "\r\n  \r\n\r\n"

    files = {"0001_status.py": untidy(PYTHON_CHANGE, " \t "), "0002_orders.yaml": untidy(YAML_CHANGE, "   ")}
    pipeline = make_pipeline({"main": files})
    assert pipeline.valid, pipeline.problems
    assert pipeline.by_id["add-user-status"].checksum == PYTHON_GOLDEN
    assert pipeline.by_id["add-orders-index"].checksum == YAML_GOLDEN


# -- what does not change a checksum -------------------------------------------------------------


@pytest.mark.parametrize("ending", ["\r\n", "\r"], ids=["crlf", "cr"])
def test_line_endings_do_not_change_checksums(ending):
    assert checksum_text(with_line_endings(PYTHON_CHANGE, ending)) == PYTHON_GOLDEN
    assert yaml_checksum(with_line_endings(YAML_CHANGE, ending)) == YAML_GOLDEN


# PyYAML (YAML 1.1) rejects a tab after most tokens as malformed, so YAML is padded with spaces.
YAML_PADDING = "   "


def test_trailing_whitespace_does_not_change_checksums():
    assert checksum_text(with_trailing_whitespace(PYTHON_CHANGE)) == PYTHON_GOLDEN
    assert yaml_checksum(with_trailing_whitespace(YAML_CHANGE, YAML_PADDING)) == YAML_GOLDEN


@pytest.mark.parametrize("tail", ["\n", "\n\n\n", "\n   \n  \n", ""], ids=["one", "several", "whitespace", "no-final-newline"])
def test_trailing_blank_lines_do_not_change_checksums(tail):
    assert checksum_text(PYTHON_CHANGE.rstrip("\n") + tail) == PYTHON_GOLDEN
    assert checksum_text(PYTHON_CHANGE.rstrip("\n") + tail.replace("  \n", "\t\n")) == PYTHON_GOLDEN
    assert yaml_checksum(YAML_CHANGE.rstrip("\n") + tail) == YAML_GOLDEN


def test_yaml_key_order_does_not_change_the_checksum():
    reordered = """template: sql
steps:
  - rollback: DROP TABLE orders
    name: table
    apply: |
      CREATE TABLE orders (
        id integer PRIMARY KEY,
        total numeric(12, 2)
      );
  - verify: SELECT 1
    rollback: DROP INDEX orders_total
    apply: CREATE INDEX orders_total ON orders (total)
environments: [dev, prod]
target: app-db
recovery: MANUAL_INTERVENTION
author: platform-team
id: add-orders-index
"""
    assert yaml_checksum(reordered) == YAML_GOLDEN


def test_yaml_quoting_style_does_not_change_the_checksum():
    quoted = """id: "add-orders-index"
author: 'platform-team'
target: "app-db"
template: 'sql'
recovery: "MANUAL_INTERVENTION"
environments: ["dev", 'prod']
steps:
  - name: "table"
    apply: "CREATE TABLE orders (\\n  id integer PRIMARY KEY,\\n  total numeric(12, 2)\\n);\\n"
    rollback: >-
      DROP TABLE orders
  - apply: 'CREATE INDEX orders_total ON orders (total)'
    rollback: |
      DROP INDEX orders_total
    verify: "SELECT 1"
"""
    assert yaml_checksum(quoted) == YAML_GOLDEN


def test_yaml_comments_do_not_change_the_checksum():
    commented = "# Orders and their index.\n" + YAML_CHANGE.replace("template: sql", "template: sql  # the built-in one").replace(
        "steps:", "# two steps, rolled back in reverse\nsteps:"
    )
    assert yaml_checksum(commented) == YAML_GOLDEN


def test_yaml_flow_or_block_style_does_not_change_the_checksum():
    flow = """{id: add-orders-index, author: platform-team, target: app-db, template: sql, recovery: MANUAL_INTERVENTION,
 environments: [dev, prod],
 steps: [{name: table, apply: "CREATE TABLE orders (\\n  id integer PRIMARY KEY,\\n  total numeric(12, 2)\\n);", rollback: DROP TABLE orders},
         {apply: "CREATE INDEX orders_total ON orders (total)", rollback: DROP INDEX orders_total, verify: SELECT 1}]}
"""
    block = YAML_CHANGE.replace("environments: [dev, prod]", "environments:\n  - dev\n  - prod")
    assert yaml_checksum(flow) == YAML_GOLDEN
    assert yaml_checksum(block) == YAML_GOLDEN


# -- what does change it --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("varchar(16)", "varchar(32)"),
        ('id = "add-user-status"', 'id = "add-user-state"'),
        ('target = "app-db"', 'target = "ext-pg"'),
        ('        cursor.execute("ALTER TABLE users DROP', '        pass\n        cursor.execute("ALTER TABLE users DROP'),
        ("    def rollback", "    @staticmethod\n    def rollback"),
    ],
    ids=["sql", "id", "target", "statement-added", "decorator"],
)
def test_real_edits_change_the_python_checksum(old, new):
    assert old in PYTHON_CHANGE
    assert checksum_text(PYTHON_CHANGE.replace(old, new)) != PYTHON_GOLDEN


def test_indentation_changes_the_python_checksum():
    # Leading whitespace is Python syntax, not formatting.
    indented = PYTHON_CHANGE.replace('        cursor.execute("ALTER TABLE users DROP', '            cursor.execute("ALTER TABLE users DROP')
    assert checksum_text(indented) != PYTHON_GOLDEN


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("total numeric(12, 2)", "total numeric(14, 2)"),
        ("id: add-orders-index", "id: add-orders-idx"),
        ("target: app-db", "target: ext-pg"),
        ("recovery: MANUAL_INTERVENTION", "recovery: ALWAYS_RETRY"),
        ("environments: [dev, prod]", "environments: [prod, dev]"),
        ("environments: [dev, prod]", "environments: [dev, prod, staging]"),
        ("    verify: SELECT 1\n", "    verify: SELECT 0\n"),
        ("    verify: SELECT 1\n", ""),
        ("template: sql", "template: sql\ntransactional: false"),
    ],
    ids=["sql", "id", "target", "recovery", "list-order", "list-item", "verify", "verify-removed", "key-added"],
)
def test_real_edits_change_the_yaml_checksum(old, new):
    assert old in YAML_CHANGE
    assert yaml_checksum(YAML_CHANGE.replace(old, new)) != YAML_GOLDEN


def test_value_types_are_part_of_the_yaml_checksum():
    as_bool = YAML_CHANGE.replace("template: sql", "template: sql\ntransactional: false")
    as_text = YAML_CHANGE.replace("template: sql", "template: sql\ntransactional: 'false'")
    assert yaml_checksum(as_bool) != yaml_checksum(as_text)


def test_step_order_changes_the_yaml_checksum():
    document = yaml.safe_load(YAML_CHANGE)
    document["steps"].reverse()
    assert checksum_document(document) != YAML_GOLDEN


# -- property: whitespace and line-ending perturbations keep the checksum -------------------------

LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=40)
PADDING = st.text(" \t", max_size=4)


@st.composite
def untidied(draw, lines, padding=PADDING):
    """Lines joined back with another line-ending style, trailing padding and blank lines."""
    style = draw(st.sampled_from(["\n", "\r\n", "\r", "mixed"]))
    out = []
    for line in lines:
        ending = draw(st.sampled_from(["\n", "\r\n"])) if style == "mixed" else style
        out.append(line + draw(padding) + ending)
    for _ in range(draw(st.integers(0, 3))):
        out.append(draw(padding) + (draw(st.sampled_from(["\n", "\r\n"])) if style == "mixed" else style))
    return "".join(out)


# The first draw of LINE builds the table of every UTF-8 character once (about 1.5 s on a slow
# 2-core machine, which Hypothesis counts as slow generation); the draws after it take milliseconds.
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(LINE, min_size=1, max_size=12))
def test_whitespace_and_line_ending_perturbations_keep_the_text_checksum(data, lines):
    tidy = "\n".join(line.rstrip() for line in lines) + "\n"
    assert checksum_text(data.draw(untidied(lines))) == checksum_text(tidy)


@given(st.data())
def test_whitespace_and_line_ending_perturbations_keep_the_yaml_checksum(data):
    untidy = data.draw(untidied(YAML_CHANGE.splitlines(), padding=st.text(" ", max_size=4)))
    assert yaml_checksum(untidy) == YAML_GOLDEN


@given(st.data())
def test_whitespace_and_line_ending_perturbations_keep_the_python_golden(data):
    assert checksum_text(data.draw(untidied(PYTHON_CHANGE.splitlines()))) == PYTHON_GOLDEN
