"""The evidence pack writer: one zip file, written entry by entry, whatever the period's size.

The entries the controls use, read apart, are fed first to
:class:`~audit_app.evidence.offline.Evidence`, which keeps the period's requests, executions and
findings, never its entries; the summary PDF is drawn from them in a thread while ``audit.jsonl``
is streamed into the zip as it is read (stored, not compressed: a verifier reads it at disk speed
and a reviewer can seek in it), its SHA-256 computed on the way. The other files are written after
it, then the manifest of every file's SHA-256 and its Ed25519 signature.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    entries: int,
    text: Iterable[tuple[bytes, int]],
    feed: Iterator[dict],
    key: Ed25519PrivateKey,
    render_summary: Callable[[Evidence, list[dict], dict], bytes],
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Write the pack at ``path``, first as :func:`partial_path`. ``entries``: how many of the period's
    entries ``audit.jsonl`` holds. ``text``: ``audit.jsonl`` in chunks of UTF-8, each with about how
    many of the period's entries it holds (for ``progress``); its lines: the context entries, the
    checkpoint (or genesis) before, the entries before, in and after the period, the checkpoint
    after; an entry line is its record with ``"record": "entry"`` and its ``part``. ``feed``: the
    lines the controls use, in the same order, read first: the summary is drawn from them in a
    thread while ``audit.jsonl`` streams."""
    evidence = Evidence(parameters)
    files: dict[str, dict] = {}
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    for line in feed:
        evidence.feed(line, line["part"])
    controls = evidence.controls()
    # The summary is drawn while audit.jsonl streams: the one waits on the renderer, the other on the server.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evidence-summary") as executor:
        summary = executor.submit(render_summary, evidence, controls, scope)
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            with archive.open(zipfile.ZipInfo(AUDIT, date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as raw:
                out = _Hashing(raw)
                for chunk, count in text:
                    out.write(chunk)
                    if count:
                        before, written = written, min(entries, written + count)
                        if progress is not None and written // PROGRESS_EVERY > before // PROGRESS_EVERY:
                            progress(written)
                files[AUDIT] = {"sha256": out.digest.hexdigest(), "bytes": out.size}
            for name, data in (
                (CHANGES, evidence.changes_csv()),
                (ACCESS, evidence.access_csv()),
                (FINDINGS, evidence.findings_csv()),
                (CONTROLS, evidence.controls_json()),
                (SUMMARY, summary.result()),
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


def partial_path(path: Path) -> Path:
    """Where the pack is written until it is complete (renamed to ``path`` then)."""
    return path.with_name(path.name + ".partial")


def _member(archive: zipfile.ZipFile, name: str, data: bytes, *, compressed: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    archive.writestr(info, data)
