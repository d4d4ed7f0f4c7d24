"""The audit trail at a million entries on PostgreSQL: CSV export beside ``psql \\copy`` (wall, peak
memory), ``audit verify`` of the whole chain beside a single-threaded recompute, and verify from the
last signed checkpoint. Now this is the ``audit-bulk`` analysis of ``bench/run.py``
(``bench/suites/audit_bulk.py``); this script runs it alone. The admin changelist at the same size
is the ``audit-admin`` analysis (``bench/suites/audit_admin.py``).

    python bench/audit_scale.py [--entries 1000000] [--repeat 5] [--pg URL]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suites.audit_bulk import main  # noqa: E402

if __name__ == "__main__":
    main()
