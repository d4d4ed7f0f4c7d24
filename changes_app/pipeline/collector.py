"""Python's cyclic garbage collector in the command line.

Start-up (Django's apps and models) and discovery (every change module) make tens of thousands of
objects that live as long as the process and hold no garbage. The collector walks the young ones
every 700 allocations and all of them now and then, and once more when the interpreter exits: at
1,000 changes that was a third of what `flamingock plan` did above its start-up
(docs/decisions.md, "The command line and the garbage collector").

So ``manage.py flamingock`` starts with the collector off, and the command, once its loading is
done, moves what is loaded out of the collector's sight (``gc.freeze()``) and turns it back on: the
command's own work is collected as usual. Only the command line does this: it is a process that
ends with its command. A worker or the web server, which reload the pipeline and live for days,
only pause the collector while they import (``paused``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings


def keep_loaded() -> None:
    """In the command line: what is loaded so far lives to the end, so the collector stops
    walking it; the collector is on afterwards. Elsewhere: nothing."""
    if settings.FLAMINGOCK_CLI:
        gc.freeze()
        gc.enable()


@contextmanager
def paused() -> Iterator[None]:
    """The collector waits while long-lived objects are made, then is as it was; in the command
    line, they are kept out of its sight (``keep_loaded``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if settings.FLAMINGOCK_CLI:
            keep_loaded()
        elif enabled:
            gc.enable()
