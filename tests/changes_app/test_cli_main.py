"""The ``flamingock`` command the package installs (changes_app/cli/main.py): ``audit verify-pack
--offline`` with no settings, no database and no Django; everything else as ``manage.py flamingock``."""

import subprocess
import sys

import pytest

from audit_app.signing import public_key_hex, signing_key
from tests.audit_app.evidence.builder import TrailBuilder, quarter_clean
from tests.audit_app.evidence.test_pack import build
from tests.conftest import REPO

NO_DJANGO = (
    "import sys; from changes_app.cli.main import main; code = main(sys.argv[1:]); "
    "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django was imported'; sys.exit(code)"
)


def flamingock(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_DJANGO, *arguments], env=env or {}, cwd=REPO, capture_output=True, text=True)


@pytest.mark.django_db
def test_verify_pack_offline_needs_no_settings_no_database_and_no_django(tmp_path):
    quarter_clean(TrailBuilder())
    pack = build(tmp_path / "q1.zip").path
    key = public_key_hex(signing_key())
    verified = flamingock("audit", "verify-pack", str(pack), "--public-key", key, "--offline")
    assert verified.returncode == 0, verified.stderr
    assert "the pack is verified" in verified.stdout
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(pack.read_bytes()[:-10])
    refused = flamingock("audit", "verify-pack", str(damaged), "--public-key", key, "--offline")
    assert refused.returncode == 6 and "does NOT verify" in refused.stdout
    usage = flamingock("audit", "verify-pack", str(pack), "--public-key", "xyz", "--offline")
    assert usage.returncode == 2 and "64 hex digits" in usage.stderr


def test_any_other_subcommand_without_settings_is_a_usage_error_that_says_what_to_set():
    completed = subprocess.run([sys.executable, "-m", "changes_app.cli.main", "plan"], env={}, cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 2
    assert "DJANGO_SETTINGS_MODULE" in completed.stderr
