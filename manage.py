#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import gc
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")
    if sys.argv[1:2] == ["flamingock"]:
        # The command line starts without the apps it never uses (settings.FLAMINGOCK_CLI).
        os.environ.setdefault("FLAMINGOCK_CLI", "1")
        # Start-up makes only objects that live to the end: the collector waits until the command
        # has loaded them (changes_app/collector.py).
        gc.disable()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
