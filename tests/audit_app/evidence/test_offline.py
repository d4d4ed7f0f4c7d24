"""The offline verifier stands alone: the standard library and ``cryptography``, no settings, no
database, no Django; it recomputes every hash version exactly as audit_app/chain.py does."""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit_app import chain
from audit_app.evidence import offline
from audit_app.signing import public_key_hex, signing_key
from tests.audit_app.evidence.builder import TrailBuilder, quarter_clean
from tests.audit_app.evidence.test_pack import build

REPO = Path(__file__).resolve().parents[3]
STDLIB = set(sys.stdlib_module_names)


def test_the_verifier_module_imports_only_the_standard_library_and_cryptography():
    tree = ast.parse(Path(offline.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported - STDLIB - {"__future__"} == {"cryptography"}


@pytest.mark.parametrize("version", chain.CHAIN_VERSIONS)
def test_every_chain_version_is_recomputed_as_the_chain_computes_it(version):
    assert version in offline.HASH_VERSIONS
    fields = dict.fromkeys(chain.HASHED_FIELDS, "")
    fields.update(
        event="change.applied", run_id=str(uuid.UUID(int=7)), actor_user_id=3, pid=None, fencing_token=2**40, duration_ms=1.25,
        details={"b": [1, 2.5, None], "a": "é\u2028", "n": 10**17}, member="eu-1" if version == 2 else None,
    )  # fmt: skip
    at = datetime(2026, 2, 3, 4, 5, 6, 789, tzinfo=UTC)
    expected = chain.entry_hash(42, "a" * 64, at, fields, version=version)
    record = {**fields, "seq": 42, "prev_hash": "a" * 64, "hash_version": version, "created_at": chain.timestamp_text(at)}
    assert offline.record_hash(record) == expected


def test_an_unknown_version_or_a_member_on_version_one_cannot_be_recomputed():
    record = {"hash_version": 9, "seq": 1, "prev_hash": "0" * 64, "created_at": "2026-01-01T00:00:00.000000Z"}
    with pytest.raises(ValueError, match="unknown to this verifier"):
        offline.record_hash(record)
    with pytest.raises(ValueError, match="names no member"):
        offline.record_hash({**record, "hash_version": 1, "member": "eu-1"})


@pytest.mark.django_db
def test_verify_pack_runs_in_a_process_with_an_empty_environment_and_never_imports_django(tmp_path):
    quarter_clean(TrailBuilder())
    pack = build(tmp_path / "q1.zip").path
    key = public_key_hex(signing_key())
    script = (
        "import sys; from audit_app.evidence.offline import main; code = main(sys.argv[1:]); "
        "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django was imported'; sys.exit(code)"
    )
    ok = subprocess.run([sys.executable, "-c", script, str(pack), "--public-key", key, "--offline"], env={}, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "the pack is verified" in ok.stdout and "PASS" in ok.stdout
    module = subprocess.run(
        [sys.executable, "-m", "audit_app.evidence.offline", str(pack), "--public-key", key, "--offline"],
        env={},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert module.returncode == 0, module.stderr
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(pack.read_bytes()[:-10])
    bad = subprocess.run(
        [sys.executable, "-m", "audit_app.evidence.offline", str(damaged), "--public-key", key], env={}, cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 6 and "does NOT verify" in bad.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.zip", "--public-key", "ab" * 32], "cannot read missing.zip"),
        (["{pack}", "--public-key", "xyz"], "--public-key must be the 64 hex digits"),
    ],
)
def test_usage_errors_exit_2_and_say_why(tmp_path, argv, message, capsys):
    pack = tmp_path / "p.zip"
    pack.write_bytes(b"PK")
    assert offline.main([arg.replace("{pack}", str(pack)) for arg in argv]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_public_key_is_a_usage_error(capsys):
    assert offline.main(["p.zip"]) == 2
