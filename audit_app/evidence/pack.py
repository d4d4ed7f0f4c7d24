"""The evidence pack writer: one zip file, written entry by entry, whatever the period's size.

``audit.jsonl`` is streamed into the zip as text as it is read (stored, not compressed: a verifier
reads it at disk speed and a reviewer can seek in it), its SHA-256 computed on the way; then the
entries the controls use, read apart, are fed to :class:`~audit_app.evidence.offline.Evidence`,
which keeps the period's requests, executions and findings, never its entries. The other files are written after it, then the manifest of every
file's SHA-256 and its Ed25519 signature.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_app.evidence.offline import (
    ACCESS,
    AUDIT,
    CHANGES,
    CONTROLS,
    FINDINGS,
    FORMAT,
    MANIFEST,
    SIGNATURE,
    SUMMARY,
    Evidence,
    manifest_message,
)
from audit_app.signing import key_id, public_key_hex

#: Entries between two calls of the progress callback.
PROGRESS_EVERY = 5_000


@dataclass
class PackResult:
    path: Path
    manifest_sha256: str
    entries: int
    controls: list[dict]
    files: dict


class _Hashing:
    """A zip member's writer that counts and hashes what goes through it."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self.handle.write(data)


def pack_write(
    path: Path,
    *,
    parameters: dict,
    scope: dict,
    text: Iterable[tuple[str, int]],
    feed: Iterator[dict],
    key: Ed25519PrivateKey,
    render_summary: Callable[[Evidence, list[dict], dict], bytes],
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Write the pack at ``path``. ``text``: ``audit.jsonl`` in chunks, each with the number of the
    period's entries in it; its lines: the context entries, the checkpoint (or genesis) before, the
    entries before, in and after the period, the checkpoint after; an entry line is its record with
    ``"record": "entry"`` and its ``part``. ``feed``: the lines the controls use, in the same order."""
    evidence = Evidence(parameters)
    files: dict[str, dict] = {}
    entries = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        with archive.open(zipfile.ZipInfo(AUDIT, date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as raw:
            out = _Hashing(raw)
            for chunk, count in text:
                out.write(chunk.encode("utf-8"))
                if count:
                    before, entries = entries, entries + count
                    if progress is not None and entries // PROGRESS_EVERY > before // PROGRESS_EVERY:
                        progress(entries)
            files[AUDIT] = {"sha256": out.digest.hexdigest(), "bytes": out.size}
        for line in feed:
            evidence.feed(line, line["part"])
        controls = evidence.controls()
        for name, data in (
            (CHANGES, evidence.changes_csv()),
            (ACCESS, evidence.access_csv()),
            (FINDINGS, evidence.findings_csv()),
            (CONTROLS, evidence.controls_json()),
            (SUMMARY, render_summary(evidence, controls, scope)),
        ):
            _member(archive, name, data, compressed=name != SUMMARY)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        public = public_key_hex(key)
        manifest = json.dumps(
            {"format": FORMAT, "scope": scope, "entries": entries, "public_key": public, "key_id": key_id(public), "files": files},
            indent=2,
            sort_keys=True,
            ensure_ascii=False,
        ).encode()
        _member(archive, MANIFEST, manifest, compressed=False)
        _member(archive, SIGNATURE, key.sign(manifest_message(manifest)).hex().encode() + b"\n", compressed=False)
    partial.replace(path)
    return PackResult(path=path, manifest_sha256=hashlib.sha256(manifest).hexdigest(), entries=entries, controls=controls, files=files)


def _member(archive: zipfile.ZipFile, name: str, data: bytes, *, compressed: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    archive.writestr(info, data)
