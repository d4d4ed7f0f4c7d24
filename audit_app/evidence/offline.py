"""The evidence pack's format, its controls and its offline verifier, with the standard library and
``cryptography`` alone: no settings, no database, no Django (an auditor may copy this one file).

    python -m audit_app.evidence.offline PACK.zip --public-key HEX --offline

checks, and names what fails: the manifest's signature and every file's SHA-256; ``audit.jsonl``,
each entry's hash recomputed exactly as ``audit_app/chain.py`` computes it (every hash version),
linked without a gap from the signed checkpoint before the period to the one after it; then
``changes.csv``, ``access.csv``, ``findings.csv`` and the controls of ``controls.json`` recomputed
from ``audit.jsonl`` and compared. Exit codes: 0 verified, 6 not verified, 2 usage.

The controls (docs/compliance.md, "Evidence packs") are computed here, from entries only, by the
same code when the pack is written and when it is checked.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "flamingock-evidence:v1"
EXIT_VERIFIED, EXIT_USAGE, EXIT_NOT_VERIFIED = 0, 2, 6
PASS, EXCEPTION, NOT_APPLICABLE = "PASS", "EXCEPTION", "NOT_APPLICABLE"

MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
SUMMARY, CHANGES, ACCESS, FINDINGS, CONTROLS, AUDIT = "summary.pdf", "changes.csv", "access.csv", "findings.csv", "controls.json", "audit.jsonl"
#: The files the manifest lists, in the order they are written.
PACK_FILES = (AUDIT, CHANGES, ACCESS, FINDINGS, CONTROLS, SUMMARY)

GENESIS_HASH = "0" * 64
#: The fields hashed after (version, seq, prev_hash, created_at), per hash version: the copy of
#: ``audit_app.chain`` that this file keeps so that it imports nothing of the product
#: (tests/audit_app/evidence/test_offline.py holds the two equal for every version).
_V1_FIELDS = (
    "event",
    "environment",
    "change_id",
    "stage",
    "order",
    "target",
    "state",
    "checksum",
    "transaction_strategy",
    "recovery_strategy",
    "run_id",
    "actor",
    "actor_user_id",
    "host",
    "pid",
    "fencing_token",
    "duration_ms",
    "reason",
    "error",
    "rollback_error",
    "details",
)
#: Version 2 (fleets) hashes the entry's ``member`` after ``details``.
HASH_VERSIONS: dict[int, tuple[str, ...]] = {1: _V1_FIELDS, 2: (*_V1_FIELDS, "member")}

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value) -> str:
    return _CANONICAL.encode(value)


def _scalar(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def record_hash(record: dict) -> str:
    """The entry hash of an ``audit.jsonl`` entry, as ``audit_app.chain.entry_hash`` computes it."""
    version = record["hash_version"]
    fields = HASH_VERSIONS.get(version)
    if fields is None:
        raise ValueError(f"hash version {version} is unknown to this verifier (it is older than the trail)")
    if version == 1 and record.get("member"):
        raise ValueError("hash version 1 names no member: the member was set after the entry was written")
    values = [version, record["seq"], record["prev_hash"], record["created_at"]]
    values += [_scalar(record[name]) for name in _V1_FIELDS[:-1]]
    details = record["details"]
    values.append(canonical_json(details if details is not None else {}))
    values += [_scalar(record[name]) for name in fields[len(_V1_FIELDS) :]]
    return hashlib.sha256(canonical_json(values).encode("utf-8")).hexdigest()


def checkpoint_message(seq: int, entry_hash: str, created_at_text: str) -> bytes:
    """``audit_app.signing.checkpoint_message`` with the time already in the chain's text form."""
    return f"flamingock-checkpoint:v1:{seq}:{entry_hash}:{created_at_text}".encode()


def manifest_message(manifest: bytes) -> bytes:
    return f"{FORMAT}:{hashlib.sha256(manifest).hexdigest()}".encode()


def signature_valid(message: bytes, signature_hex: str, public_hex: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def time_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the controls -----------------------------------------------------------------------------------

#: Executions: the states a run reaches by doing a change (a manual mark is not an execution).
EXECUTED = {"change.applied": "APPLIED", "change.failed": "FAILED", "change.rolled_back": "ROLLED_BACK", "change.rollback_failed": "ROLLBACK_FAILED"}
#: Drift kinds that say something was done to a target outside governance, and the event of a forced migrate.
OUTSIDE_KINDS = ("applied_outside_governance", "unapplied_outside_governance", "migrate.override")
ACCESS_EVENTS = ("permission.granted", "permission.revoked", "auth.login", "auth.login_failed", "access.refused")
VERIFY_FAILED_KINDS = ("VERIFY_FAILED", "PROBE_FAILED")
#: The events :meth:`Evidence.feed` reads whatever their environment, and (``SCOPED_*``) those it
#: reads only in the pack's scope: a pack reads just these from the trail for its controls
#: (``audit_app/evidence/trail.py``); the verifier feeds every entry and must get the same rows.
FED_EVENTS = (*ACCESS_EVENTS, "audit.verified")
FED_PREFIXES = ("request.",)
SCOPED_EVENTS = ("run.queued", "break_glass.used", "review.overdue", *EXECUTED, "migrate.override")
SCOPED_PREFIXES = ("drift.",)

CHANGES_COLUMNS = (
    "change_id",
    "environment",
    "target",
    "checksum",
    "requester",
    "approvers",
    "separation_of_duties",
    "run_id",
    "executed_at",
    "result",
    "verification",
    "audit_seq_first",
    "audit_seq_last",
)
ACCESS_COLUMNS = ("seq", "at", "event", "actor", "subject", "grant", "method", "reason", "folded")
FINDINGS_COLUMNS = (
    "finding",
    "kind",
    "environment",
    "target",
    "change_id",
    "detected_at",
    "acknowledged_at",
    "acknowledged_by",
    "resolved_at",
    "resolved_by",
    "seqs",
)

CONTROL_TITLES = {
    "approved_by_another": "Every change in a protected environment was approved by someone other than its requester",
    "nothing_outside_governance": "Nothing was applied outside governance",
    "chain_verified_daily": "The chain was verified every day of the period, with no gap and no failure",
    "drift_acknowledged_in_time": "Every drift finding was acknowledged within the configured time",
    "emergency_reviewed_in_time": "Every emergency (break-glass) change was reviewed within the configured time",
}


class Evidence:
    """Fed the pack's entries in chain order (``context`` ones first), it computes the rows of the
    CSV files and the controls. Memory holds the period's requests, executions and findings, never
    its entries.

    ``parameters``: ``from``/``to`` (chain time text, ``to`` exclusive), ``end`` (the earlier of
    ``to`` and the time the pack was made: no deadline after it is judged), ``environment``,
    ``targets`` and ``members`` (empty: all), ``protected_environments``, ``drift_ack_hours``,
    ``review_hours`` and ``roles_at_start`` (user -> role groups held when the period began)."""

    def __init__(self, parameters: dict):
        self.parameters = parameters
        self.start, self.end = parse_time(parameters["from"]), parse_time(parameters["end"])
        # Chain time text compares as time (fixed width), so each entry is placed without parsing.
        self.since_text, self.until_text = time_text(self.start), time_text(parse_time(parameters["to"]))
        self.environment = parameters["environment"]
        self.targets = set(parameters.get("targets") or ())
        self.members = set(parameters.get("members") or ())
        self.protected = set(parameters.get("protected_environments") or ())
        self.drift_ack = timedelta(hours=parameters["drift_ack_hours"])
        self.review = timedelta(hours=parameters["review_hours"])
        self.roles = {user: set(groups) for user, groups in (parameters.get("roles_at_start") or {}).items()}
        self.requests: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.break_glass: list[dict] = []
        self.executions: list[dict] = []
        self.episodes: dict[str, dict] = {}
        self.findings: list[dict] = []
        self.outside: list[dict] = []
        self.verifications: dict[date, list[dict]] = {}
        self.access: list[dict] = []
        self.overdue: dict[str, int] = {}

    # -- feeding ---------------------------------------------------------------------------------

    def in_scope(self, record: dict) -> bool:
        if record["environment"] != self.environment:
            return False
        if self.targets and record["target"] not in self.targets:
            return False
        member = record.get("member") or (record["details"] or {}).get("member")
        return not (self.members and member and member not in self.members)

    def in_period(self, record: dict, part: str) -> bool:
        """An entry of the period: in its run of sequence numbers and of its time (an entry whose
        time is out of order with its neighbours is linked but not judged)."""
        return part == "period" and self.since_text <= record["created_at"] < self.until_text

    def feed(self, record: dict, part: str) -> None:
        event, details = record["event"], record["details"] or {}
        if event in ("permission.granted", "permission.revoked") and details.get("kind") == "group_membership":
            groups = self.roles.setdefault(str(details.get("user", "")), set())
            (groups.add if event == "permission.granted" else groups.discard)(str(details.get("group", "")))
        if event.startswith("request.") and details.get("request_id") is not None:
            self._request(record, details)
        if not self.in_period(record, part):
            return
        if event == "audit.verified":
            self.verifications.setdefault(parse_time(record["created_at"]).date(), []).append({"seq": record["seq"], "ok": bool(details.get("ok"))})
        if event in ACCESS_EVENTS:
            self._access(record, details)
        if not self.in_scope(record):
            return
        if event == "run.queued" and record["run_id"]:
            self.runs[record["run_id"]] = {"request_id": _key(details.get("request_id")), "seq": record["seq"]}
        elif event == "break_glass.used":
            self.break_glass.append(
                {
                    "seq": record["seq"],
                    "at": record["created_at"],
                    "actor": record["actor"],
                    "change_id": details.get("change_id") or record["change_id"],
                    "checksum": details.get("checksum") or record["checksum"],
                    "review_request_id": _key(details.get("review_request_id")),
                    "run_id": _key(details.get("run_id")),
                }
            )
        elif event == "review.overdue":
            self.overdue[_key(details.get("review_request_id") or details.get("request_id"))] = record["seq"]
        elif event in EXECUTED and record["run_id"]:
            self._execution(record, details)
        elif event == "migrate.override":
            self.outside.append({"seq": record["seq"], "reason": f"a plain migrate was forced: {record['reason'] or record['change_id']}"})
        elif event.startswith("drift."):
            self._drift(record, details)

    def _request(self, record: dict, details: dict) -> None:
        key = _key(details["request_id"])
        if record["event"] == "request.created":
            self.requests[key] = {
                "requester": record["actor"],
                "kind": details.get("kind", ""),
                "seq": record["seq"],
                "at": record["created_at"],
                "approvals": [],
                "approved_at": None,
                "approved_seq": None,
            }
            return
        request = self.requests.get(key)
        if request is None or record["event"] != "request.approved":
            return
        request["approvals"].append(
            {
                "actor": record["actor"],
                "role": _role(details, self.roles.get(record["actor"], ())),
                "automatic": bool(details.get("automatic")),
                "seq": record["seq"],
            }
        )
        if details.get("final") and request["approved_at"] is None:
            request["approved_at"], request["approved_seq"] = record["created_at"], record["seq"]

    def _access(self, record: dict, details: dict) -> None:
        subject = details.get("user") or details.get("group") or details.get("username") or details.get("object") or record["change_id"]
        grant = details.get("group") or details.get("permission") or details.get("action") or details.get("kind") or ""
        if details.get("user") and details.get("group"):
            subject, grant = details["user"], f"group {details['group']}"
        self.access.append(
            {
                "seq": record["seq"],
                "at": record["created_at"],
                "event": record["event"],
                "actor": record["actor"],
                "subject": str(subject or ""),
                "grant": str(grant),
                "method": str(details.get("method", "")),
                "reason": str(details.get("reason_code") or details.get("code") or record["reason"] or ""),
                "folded": str(details.get("folded", "")),
            }
        )

    def _execution(self, record: dict, details: dict) -> None:
        run = self.runs.get(record["run_id"]) or {}
        request = self.requests.get(run.get("request_id") or "")
        # A break-glass use counts as the approval of the action it started: named by its run, or
        # the latest use on this change and checksum when no person approved the run's request.
        use = next((u for u in reversed(self.break_glass) if u["run_id"] == record["run_id"]), None)
        if use is None and (request is None or not any(not a["automatic"] for a in request["approvals"])):
            use = next(
                (u for u in reversed(self.break_glass) if u["change_id"] == record["change_id"] and u["checksum"] in ("", record["checksum"])),
                None,
            )
        protected = record["environment"] in self.protected
        first = min(filter(None, [record["seq"], run.get("seq"), request and request["seq"], use and use["seq"]]))
        if use is not None:
            sod, why = "BREAK_GLASS", "break-glass use: judged by the emergency review control"
        elif request is not None:
            people = [a for a in request["approvals"] if not a["automatic"]]
            separated = bool(people) and request["approved_at"] is not None and all(a["actor"] != request["requester"] for a in people)
            sod = PASS if separated else (EXCEPTION if protected else NOT_APPLICABLE)
            why = (
                ""
                if separated
                else ("approved by the policy alone" if not people else "approved by its requester" if request["approved_at"] else "not approved")
            )
        else:
            sod, why = (EXCEPTION if protected else NOT_APPLICABLE), "executed without an approved request"
        self.executions.append(
            {
                "seq": record["seq"],
                "change_id": record["change_id"],
                "environment": record["environment"],
                "target": record["target"],
                "checksum": record["checksum"],
                "requester": use["actor"] if use else (request["requester"] if request else ""),
                "approvers": "; ".join(f"{a['actor']} ({a['role']})" for a in request["approvals"]) if request else "",
                "separation_of_duties": sod,
                "why": why,
                "protected": protected,
                "run_id": record["run_id"],
                "executed_at": record["created_at"],
                "result": EXECUTED[record["event"]],
                "verification": "reconciled" if details.get("reconciled") else "not_checked",
                "audit_seq_first": first,
                "audit_seq_last": record["seq"],
                "requested_at": request["at"] if request else None,
                "approved_at": request["approved_at"] if request else None,
                "refs": [
                    s
                    for s in [
                        request and request["seq"],
                        *[a["seq"] for a in (request or {}).get("approvals", [])],
                        use and use["seq"],
                        run.get("seq"),
                        record["seq"],
                    ]
                    if s
                ],
            }
        )

    def _drift(self, record: dict, details: dict) -> None:
        finding = _key(details.get("finding"))
        kind = details.get("kind", "")
        if record["event"] == "drift.detected":
            if kind in OUTSIDE_KINDS:
                self.outside.append({"seq": record["seq"], "reason": f"drift {kind}: {record['reason']}"})
            if kind in VERIFY_FAILED_KINDS and details.get("change_id"):
                for row in self.executions:
                    if row["change_id"] == details["change_id"]:
                        row["verification"] = "verify_failed"
            episode = {
                "finding": finding,
                "kind": kind,
                "environment": record["environment"],
                "target": record["target"],
                "change_id": details.get("change_id", ""),
                "detected_at": record["created_at"],
                "acknowledged_at": "",
                "acknowledged_by": "",
                "resolved_at": "",
                "resolved_by": "",
                "seqs": [record["seq"]],
            }
            self.episodes[finding] = episode
            self.findings.append(episode)
            return
        episode = self.episodes.get(finding)
        if episode is None:
            return  # detected before the period: its own pack judged it
        episode["seqs"].append(record["seq"])
        if record["event"] == "drift.acknowledged" and not episode["acknowledged_at"]:
            episode["acknowledged_at"], episode["acknowledged_by"] = record["created_at"], record["actor"]
        elif record["event"] == "drift.resolved" and not episode["resolved_at"]:
            episode["resolved_at"], episode["resolved_by"] = record["created_at"], record["actor"]

    # -- results -----------------------------------------------------------------------------------

    def changes_csv(self) -> bytes:
        return _csv(CHANGES_COLUMNS, self.executions)

    def access_csv(self) -> bytes:
        return _csv(ACCESS_COLUMNS, self.access)

    def findings_csv(self) -> bytes:
        return _csv(FINDINGS_COLUMNS, [{**row, "seqs": " ".join(map(str, row["seqs"]))} for row in self.findings])

    def controls(self) -> list[dict]:
        return [
            self._approved_by_another(),
            self._nothing_outside_governance(),
            self._chain_verified_daily(),
            self._drift_acknowledged(),
            self._emergency_reviewed(),
        ]

    def controls_json(self) -> bytes:
        return (
            json.dumps({"format": FORMAT, "parameters": self.parameters, "controls": self.controls()}, indent=2, sort_keys=True, ensure_ascii=False)
            + "\n"
        ).encode()

    def _approved_by_another(self) -> dict:
        rows = [row for row in self.executions if row["protected"]]
        exceptions = [{"seq": row["seq"], "reason": f"{row['change_id']}: {row['why']}"} for row in rows if row["separation_of_duties"] == EXCEPTION]
        return _control("approved_by_another", rows, exceptions, sorted({s for row in rows for s in row["refs"]}))

    def _nothing_outside_governance(self) -> dict:
        return _control("nothing_outside_governance", [True], self.outside, [item["seq"] for item in self.outside])

    def _chain_verified_daily(self) -> dict:
        exceptions, day, refs = [], self.start.date(), []
        last = (self.end - timedelta(microseconds=1)).date()
        while day <= last:
            found = self.verifications.get(day, [])
            refs += [item["seq"] for item in found]
            failed = [item for item in found if not item["ok"]]
            if failed:
                exceptions += [{"seq": item["seq"], "reason": f"{day}: the verification found the chain broken"} for item in failed]
            elif not found:
                exceptions.append({"seq": None, "reason": f"{day}: no verification (a gap)"})
            day += timedelta(days=1)
        return _control("chain_verified_daily", [True] if self.end > self.start else [], exceptions, refs)

    def _drift_acknowledged(self) -> dict:
        exceptions, refs = [], []
        for episode in self.findings:
            refs += episode["seqs"]
            deadline = parse_time(episode["detected_at"]) + self.drift_ack
            handled = [parse_time(t) for t in (episode["acknowledged_at"], episode["resolved_at"]) if t]
            first = min(handled) if handled else None
            if (first is None and deadline < self.end) or (first is not None and first > deadline):
                late = f"handled after {first - parse_time(episode['detected_at'])}" if first else "not acknowledged"
                exceptions.append({"seq": episode["seqs"][0], "reason": f"finding {episode['finding']} ({episode['kind']}): {late}"})
        return _control("drift_acknowledged_in_time", self.findings, exceptions, refs)

    def _emergency_reviewed(self) -> dict:
        exceptions, refs = [], []
        for use in self.break_glass:
            refs.append(use["seq"])
            review = self.requests.get(use["review_request_id"] or "")
            deadline = parse_time(use["at"]) + self.review
            name = f"break-glass #{use['seq']} ({use['change_id']})"
            overdue = self.overdue.get(use["review_request_id"] or "")
            if overdue:
                refs.append(overdue)
            if review is not None:
                refs += [a["seq"] for a in review["approvals"]]
            reviewers = [a for a in (review or {}).get("approvals", []) if not a["automatic"]]
            if any(a["actor"] == use["actor"] for a in reviewers):
                exceptions.append({"seq": use["seq"], "reason": f"{name}: reviewed by the person who used it"})
            elif review is not None and review["approved_at"] is not None:
                # Late by the pack's window, or by the product's own deadline at the time of use
                # (its ``review.overdue`` entry), whichever says so: the two windows may differ.
                if overdue or parse_time(review["approved_at"]) > deadline:
                    exceptions.append({"seq": use["seq"], "reason": f"{name}: reviewed late"})
            elif overdue or deadline < self.end:
                exceptions.append({"seq": use["seq"], "reason": f"{name}: not reviewed in time"})
        return _control("emergency_reviewed_in_time", self.break_glass, exceptions, sorted(refs))


def _role(details: dict, inferred) -> str:
    """The approver's roles as recorded in the decision's entry (``details.roles``); for an entry
    written before decisions recorded them, inferred from the role grants before it."""
    roles = details.get("roles")
    if not isinstance(roles, list):
        roles = sorted(inferred)
    return ", ".join(str(role) for role in roles) or "-"


def _key(value) -> str:
    return "" if value is None else str(value)


def _control(name: str, subjects, exceptions: list[dict], refs: list) -> dict:
    result = EXCEPTION if exceptions else (PASS if subjects else NOT_APPLICABLE)
    return {"id": name, "title": CONTROL_TITLES[name], "result": result, "checked": len(subjects), "exceptions": exceptions, "entries": refs}


def _csv(columns: tuple[str, ...], rows: Iterable[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else row.get(name) for name in columns])
    return buffer.getvalue().encode("utf-8")


# -- the verifier ---------------------------------------------------------------------------------


class PackProblems(Exception):
    """The pack could not be read far enough to check the rest."""


class Verdict:
    def __init__(self):
        self.problems: list[str] = []
        self.entries = 0
        self.controls: list[dict] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, problem: str) -> None:
        if len(self.problems) < 100:
            self.problems.append(problem)


def _lines(handle) -> Iterator[tuple[int, dict | None]]:
    for number, raw in enumerate(io.TextIOWrapper(handle, encoding="utf-8", newline="\n"), start=1):
        try:
            value = json.loads(raw)
        except ValueError:
            yield number, None
            continue
        yield number, value if isinstance(value, dict) else None


def _check_checkpoint(line: dict, public_key: str, verdict: Verdict, position: str) -> None:
    if line.get("record") == "genesis":
        if line.get("seq") != 0 or line.get("entry_hash") != GENESIS_HASH:
            verdict.fail(f"{AUDIT}: the genesis line is not the chain's start")
        return
    message = checkpoint_message(line.get("seq"), line.get("entry_hash"), line.get("created_at"))
    if line.get("public_key") != public_key or not signature_valid(message, line.get("signature", ""), public_key):
        verdict.fail(f"{AUDIT}: the checkpoint {position} the period (#{line.get('seq')}) is not signed by the given key")


def _check_audit(handle, public_key: str, evidence: Evidence | None, verdict: Verdict) -> None:
    """Every entry's hash, the links from the checkpoint before to the one after, and the entries
    fed to ``evidence``."""
    before = after = None
    previous_seq, previous_hash = None, None
    parts_seen: list[str] = []
    for number, line in _lines(handle):
        if line is None:
            verdict.fail(f"{AUDIT}: line {number} is not a JSON object")
            continue
        kind = line.get("record")
        if kind in ("checkpoint", "genesis"):
            position = line.get("position", "before")
            _check_checkpoint(line, public_key, verdict, position)
            if position == "before":
                before, previous_seq, previous_hash = line, line.get("seq"), line.get("entry_hash")
            else:
                after = line
            continue
        if kind != "entry":
            verdict.fail(f"{AUDIT}: line {number} is neither an entry nor a checkpoint")
            continue
        part = line.get("part")
        try:
            digest = record_hash(line)
        except (KeyError, TypeError, ValueError) as error:
            verdict.fail(f"{AUDIT}: entry #{line.get('seq')} cannot be recomputed: {error}")
            continue
        if digest != line.get("entry_hash"):
            verdict.fail(f"{AUDIT}: entry #{line['seq']}: its content does not match its hash (edited or forged)")
        if part != "context":
            if before is None:
                verdict.fail(f"{AUDIT}: entry #{line['seq']} comes before any checkpoint")
            elif line["seq"] != previous_seq + 1:
                verdict.fail(f"{AUDIT}: entry #{line['seq']} follows #{previous_seq}: entries are missing")
            elif line["prev_hash"] != previous_hash:
                verdict.fail(f"{AUDIT}: entry #{line['seq']} does not link to #{previous_seq}")
            previous_seq, previous_hash = line["seq"], line["entry_hash"]
            if not parts_seen or parts_seen[-1] != part:
                parts_seen.append(part)
        if evidence is not None:
            verdict.entries += evidence.in_period(line, part)
            evidence.feed(line, part)
    if before is None:
        verdict.fail(f"{AUDIT}: no signed checkpoint before the period")
    if after is None:
        verdict.fail(f"{AUDIT}: no signed checkpoint after the period")
    elif (after.get("seq"), after.get("entry_hash")) != (previous_seq, previous_hash):
        verdict.fail(f"{AUDIT}: the last entry (#{previous_seq}) does not link to the signed checkpoint after the period (#{after.get('seq')})")
    if any(part not in ("before", "period", "after") for part in parts_seen) or parts_seen != sorted(
        parts_seen, key=("before", "period", "after").index
    ):
        verdict.fail(f"{AUDIT}: its entries are not in the order before, period, after")


def verify_pack(path, *, public_key: str) -> Verdict:
    """Check a pack with the public key alone; a verdict naming every problem found."""
    verdict = Verdict()
    public_key = public_key.strip().lower()
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        verdict.fail(f"the pack cannot be opened as a zip file: {error}")
        return verdict
    with archive:
        names = set(archive.namelist())
        if MANIFEST not in names or SIGNATURE not in names:
            verdict.fail(f"the pack has no {MANIFEST} or no {SIGNATURE}")
            return verdict
        manifest_bytes = archive.read(MANIFEST)
        signature = archive.read(SIGNATURE).decode("ascii", "replace").strip()
        if not signature_valid(manifest_message(manifest_bytes), signature, public_key):
            verdict.fail(
                f"{MANIFEST}: its signature is not valid for the given public key (the manifest or its signature was changed, or another key signed it)"
            )
        try:
            manifest = json.loads(manifest_bytes)
            files = manifest["files"]
        except (ValueError, KeyError, TypeError):
            verdict.fail(f"{MANIFEST}: it cannot be read")
            return verdict
        for name in PACK_FILES:
            expected = (files.get(name) or {}).get("sha256")
            if name not in names or expected is None:
                verdict.fail(f"{name}: missing from the pack or from its manifest")
                continue
            digest = hashlib.sha256()
            with archive.open(name) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != expected:
                verdict.fail(f"{name}: its SHA-256 differs from the manifest's (the file was changed)")
        extra = names - set(PACK_FILES) - {MANIFEST, SIGNATURE}
        if extra:
            verdict.fail(f"files not in the manifest: {', '.join(sorted(extra))}")
        try:
            stated = json.loads(archive.read(CONTROLS))
            evidence = Evidence(stated["parameters"])
        except (KeyError, ValueError, TypeError) as error:
            verdict.fail(f"{CONTROLS}: it cannot be read ({error}); the controls were not recomputed")
            stated, evidence = None, None
        with archive.open(AUDIT) as handle:
            _check_audit(handle, public_key, evidence, verdict)
        if evidence is None:
            return verdict
        verdict.controls = evidence.controls()
        for name, recomputed in ((CHANGES, evidence.changes_csv()), (ACCESS, evidence.access_csv()), (FINDINGS, evidence.findings_csv())):
            if archive.read(name) != recomputed:
                verdict.fail(f"{name}: it differs from the rows recomputed from {AUDIT}")
        stated_controls = {control.get("id"): control for control in stated.get("controls", [])}
        for control in verdict.controls:
            if stated_controls.get(control["id"]) != control:
                verdict.fail(f"{CONTROLS}: control {control['id']} differs from its recomputation from {AUDIT} (recomputed: {control['result']})")
        if len(stated_controls) != len(verdict.controls):
            verdict.fail(f"{CONTROLS}: it does not hold exactly the {len(verdict.controls)} controls")
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify-pack", description="Verify a Flamingock evidence pack offline, with the public key alone.")
    parser.add_argument("file")
    parser.add_argument("--public-key", required=True, help="the audit signing key's public key (64 hex digits)")
    parser.add_argument("--offline", action="store_true", help="accepted for symmetry with the command line: this check is always offline")
    parser.add_argument("--json", action="store_true")
    try:
        options = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_USAGE if exit_.code else EXIT_VERIFIED
    return report(options.file, options.public_key, as_json=options.json, out=sys.stdout)


def usage_problem(file, public_key: str) -> str | None:
    key = (public_key or "").strip()
    if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
        return "--public-key must be the 64 hex digits of the Ed25519 public key"
    try:
        with open(file, "rb"):
            pass
    except OSError as error:
        return f"cannot read {file}: {error.strerror or error}"
    return None


def report(file, public_key: str, *, as_json: bool, out) -> int:
    """Verify and print the verdict; the exit code."""
    problem = usage_problem(file, public_key)
    if problem:
        print(json.dumps({"ok": False, "error": problem}) if as_json else f"usage: {problem}", file=out if as_json else sys.stderr)
        return EXIT_USAGE
    verdict = verify_pack(file, public_key=public_key)
    if as_json:
        results = {control["id"]: control["result"] for control in verdict.controls}
        print(json.dumps({"ok": verdict.ok, "entries": verdict.entries, "problems": verdict.problems, "controls": results}), file=out)
    elif verdict.ok:
        print(f"the pack is verified: {verdict.entries} entries of the period, linked to both signed checkpoints", file=out)
        for control in verdict.controls:
            print(f"  {control['result']:<15} {control['title']}", file=out)
    else:
        print("the pack does NOT verify:", file=out)
        for problem in verdict.problems:
            print(f"  {problem}", file=out)
    return EXIT_VERIFIED if verdict.ok else EXIT_NOT_VERIFIED


if __name__ == "__main__":
    sys.exit(main())
