"""A pytest plugin that sets FLAMINGOCK_DEMO=1 for the test run, unless the environment says
otherwise: ``-p tests.support.demo`` in pyproject.toml loads it before pytest-django reads the
settings, which conftest files come too late for.

The embedded demo (the example app, its stages and target systems) is off unless FLAMINGOCK_DEMO=1
(flamingock_site/settings.py); tests of the example pipeline and of ``demo_setup`` need it, and
child processes inherit it. Tests of the settings themselves start processes with a clean
environment (tests/test_production_settings.py).
"""

import os

os.environ.setdefault("FLAMINGOCK_DEMO", "1")
