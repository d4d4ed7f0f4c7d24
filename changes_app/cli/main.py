"""The ``flamingock`` command the package installs: ``python manage.py flamingock ...`` without
``manage.py``, for the project named by ``DJANGO_SETTINGS_MODULE``.

``flamingock audit verify-pack FILE --public-key HEX --offline`` needs neither settings nor a database:
it is answered by the offline verifier (:mod:`audit_app.evidence.offline`, the standard library and
``cryptography`` only) before Django is set up, so an auditor can check a pack on a machine that has
nothing but the package (exit codes 0 verified, 6 not verified, 2 usage).
"""

from __future__ import annotations

import os
import sys

from audit_app.evidence import offline

USAGE = "flamingock: set DJANGO_SETTINGS_MODULE to your project's settings, or run python manage.py flamingock ..."


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:2] == ["audit", "verify-pack"] and "--offline" in arguments:
        return offline.main(arguments[2:])
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        print(USAGE, file=sys.stderr)
        return 2
    # Django is imported only here: the offline path above never loads it.
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(["flamingock", "flamingock", *arguments])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
