"""Checksums of change sources (docs/semantics.md §2).

Version 1 of the normalisation, fixed forever so that checksums survive product upgrades:
- code: the module source with line endings unified, trailing whitespace removed from every line
  and trailing blank lines dropped;
- YAML: the parsed document, every string normalised the same way, serialised as canonical JSON
  (sorted keys, no insignificant whitespace, UTF-8).
"""

import hashlib
import json
from typing import Any


def normalise_text(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def checksum_text(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def _normalise_document(value: Any) -> Any:
    if isinstance(value, str):
        return normalise_text(value).rstrip("\n") if "\n" in value or "\r" in value else value.rstrip()
    if isinstance(value, dict):
        return {str(key): _normalise_document(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise_document(item) for item in value]
    return value


def canonical_document(document: Any) -> str:
    return json.dumps(_normalise_document(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def checksum_document(document: Any) -> str:
    return hashlib.sha256(canonical_document(document).encode("utf-8")).hexdigest()


def pipeline_digest(entries: list[tuple[str, str, str, str]]) -> str:
    """Digest of (stage, order, id, checksum) of every change: a run refuses another pipeline."""
    payload = "\n".join("\t".join(entry) for entry in entries)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
