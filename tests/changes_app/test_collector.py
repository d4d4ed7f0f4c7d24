"""The cyclic garbage collector around loading (changes_app/collector.py)."""

import gc
import sys

import pytest
from django.test import override_settings

from changes_app.pipeline import collector


@pytest.fixture
def collector_restored():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_paused_outside_the_command_line_waits_then_leaves_the_collector_as_it_was(collector_restored, enabled):
    gc.enable() if enabled else gc.disable()
    frozen = gc.get_freeze_count()
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled
    assert gc.get_freeze_count() == frozen  # a worker or the web server freezes nothing: they reload


def test_paused_restores_the_collector_when_loading_fails(collector_restored):
    gc.enable()
    with pytest.raises(ImportError), collector.paused():
        raise ImportError("a change module that does not import")
    assert gc.isenabled()


@override_settings(FLAMINGOCK_CLI=True)
def test_in_the_command_line_what_was_loaded_is_frozen_and_the_collector_is_on(collector_restored):
    gc.disable()  # as manage.py starts the command line
    with collector.paused():
        loaded = [[index] for index in range(1000)]  # long-lived container objects
    assert gc.isenabled()
    assert gc.is_tracked(loaded[0])
    assert not any(candidate is loaded[0] for candidate in gc.get_objects())  # out of the collector's generations
    assert gc.get_freeze_count() >= len(loaded)


def test_keep_loaded_does_nothing_outside_the_command_line(collector_restored):
    gc.disable()
    frozen = gc.get_freeze_count()
    collector.keep_loaded()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_discovery_imports_with_the_collector_paused(make_pipeline, unique, settings, collector_restored):
    """A change module is imported with the collector off; it is on again once discovery is done."""
    gc.enable()
    source = (
        "import gc\n\nfrom changes_app.definitions import Change\n\nCOLLECTOR_ON = gc.isenabled()\n\n\n"
        f"class Probe(Change):\n    id = 'gc-{unique}'\n    author = 't'\n    target = 'app-db'\n\n    def apply(self, cursor):\n        pass\n"
    )
    pipeline = make_pipeline({"s": {"0001_probe.py": source}})
    assert not pipeline.problems
    assert [change.id for change in pipeline.stages[0].changes] == [f"gc-{unique}"]
    package = settings.FLAMINGOCK_STAGES[0].split("=", 1)[1]
    assert sys.modules[f"{package}.0001_probe"].COLLECTOR_ON is False
    assert gc.isenabled()
