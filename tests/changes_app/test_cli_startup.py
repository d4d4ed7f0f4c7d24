"""The command line starts without Django REST framework's serializers: its ``--json`` comes from
``services.representations``, and importing DRF's serializers (and what they pull in) cost about 150 ms of its start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support.trails import sql_change

#: Run in a child as ``manage.py flamingock plan --json`` is; Django's set-up is done first so that the
#: DRF modules every start-up loads (the installed app's own) are told apart from the command's.
PROBE = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
os.environ.setdefault("FLAMINGOCK_CLI", "1")
import django
django.setup()
drf = lambda: sorted(name for name in sys.modules if name.split(".")[0] == "rest_framework")
at_setup = drf()
sys.argv = ["manage.py", "flamingock", "plan", "--json"]
import manage
manage.main()
print()
print("PROBE", "rest_framework.serializers" in sys.modules, " ".join(at_setup), "|", " ".join(drf()))
"""


@pytest.mark.slow
def test_plan_json_imports_no_module_of_django_rest_framework(make_pipeline, unique, subprocess_env):
    change = f"c-{unique}"
    make_pipeline({"s": {"0001_c.yaml": sql_change(change, f"CREATE TABLE t_{unique} (id integer)")}})

    result = subprocess.run([sys.executable, "-c", PROBE], env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=REPO)

    assert result.returncode == 0, result.stderr[-2000:]
    output, probe = result.stdout.rsplit("\nPROBE ", 1)
    assert [item["id"] for item in json.loads(output)["changes"]] == [change]
    serializers_loaded, modules = probe.strip().split(" ", 1)
    at_setup, after_command = (part.split() for part in modules.split("|"))
    assert serializers_loaded == "False"
    assert after_command == at_setup  # the command itself imports nothing of DRF
    assert set(at_setup) <= {"rest_framework", "rest_framework.apps", "rest_framework.checks"}  # the installed app alone
