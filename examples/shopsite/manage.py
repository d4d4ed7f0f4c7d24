#!/usr/bin/env python
"""shopsite's command-line utility: a Django project of its own that installs Flamingock the
documented way (docs/install.md)."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
