"""Target-system helpers for tests: a journal that records every effect in a file, visible
across processes and surviving kill -9 (each line is written and fsynced before apply returns)."""

import json
import os
from pathlib import Path


class Journal:
    """A non-transactional target: appends one JSON line per effect."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, **effect) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(effect, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def count(self, **match) -> int:
        return sum(1 for entry in self.entries() if all(entry.get(k) == v for k, v in match.items()))


def journal_factory(name, config):
    """``generic`` target factory: the journal file is named by FLAMINGOCK_TEST_JOURNAL."""
    return {"journal": Journal(os.environ["FLAMINGOCK_TEST_JOURNAL"])}
