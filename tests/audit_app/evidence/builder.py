"""A trail builder for evidence tests: entries at past dates, hashed and linked by the product's own
chain functions (as bench/audit_data.py builds its million entries), and checkpoints signed with the
audit key. Then two quarters: one where every control passes, one with each kind of exception."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from audit_app.chain import HASHED_FIELDS, MEMBER_FIELD, chain_version, entry_hash, normalise_details
from audit_app.models import AuditCheckpoint, AuditEntry, ChainHead
from audit_app.signing import checkpoint_message, key_id, sign

Q1_START, Q1_END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
DRIFT_ACK_HOURS, REVIEW_HOURS = 24.0, 48.0


class TrailBuilder:
    """Entries appended after the current chain head, written in one bulk insert by :meth:`save`."""

    def __init__(self):
        head = ChainHead.objects.filter(id=1).first()
        self.seq, self.previous = (head.seq, head.entry_hash) if head and head.seq else (0, "0" * 64)
        self.pending: list[AuditEntry] = []
        self.requests = 0

    def add(self, event: str, at: datetime, *, actor: str = "system", environment: str = "prod", details: dict | None = None, **fields) -> int:
        values = dict.fromkeys(HASHED_FIELDS, "")
        values.update(run_id=None, actor_user_id=None, pid=None, fencing_token=None, duration_ms=None, host="tests")
        values.update(event=event, actor=actor, environment=environment, details=normalise_details(details or {}), **fields)
        values[MEMBER_FIELD] = fields.get(MEMBER_FIELD)
        self.seq += 1
        version = chain_version(values[MEMBER_FIELD])
        digest = entry_hash(self.seq, self.previous, at, values, version=version)
        run_id = values.pop("run_id")
        self.pending.append(
            AuditEntry(
                seq=self.seq, hash_version=version, prev_hash=self.previous, entry_hash=digest, created_at=at,
                run_id=uuid.UUID(str(run_id)) if run_id else None, **values,
            )
        )  # fmt: skip
        self.previous = digest
        return self.seq

    def save(self) -> None:
        AuditEntry.objects.bulk_create(self.pending, batch_size=500)
        self.pending = []
        ChainHead.objects.update_or_create(id=1, defaults={"seq": self.seq, "entry_hash": self.previous})

    def checkpoint(self, at: datetime) -> AuditCheckpoint:
        """Sign the head as it is now (call :meth:`save` first)."""
        signature, public = sign(checkpoint_message(self.seq, self.previous, at))
        checkpoint = AuditCheckpoint(
            seq=self.seq, entry_hash=self.previous, created_at=at, key_id=key_id(public), public_key=public, signature=signature, reason="tests"
        )
        checkpoint.save()
        return checkpoint

    # -- the stories a quarter is made of -------------------------------------------------------------

    def verified(self, day: datetime, *, ok: bool = True) -> int:
        return self.add("audit.verified", day + timedelta(hours=2), details={"ok": ok, "mode": "full"}, environment="prod")

    def grant(self, at: datetime, user: str, group: str) -> int:
        return self.add("permission.granted", at, actor="admin", details={"kind": "group_membership", "user": user, "group": group})

    def change(
        self, at: datetime, change_id: str, *, requester: str = "alice", approver: str | None = "bob", target: str = "app-db",
        environment: str = "prod", outcome: str = "change.applied", automatic: bool = False,
    ) -> int:  # fmt: skip
        """A request, its approval, a run and the execution; the execution's seq."""
        self.requests += 1
        request_id, run_id = self.requests, str(uuid.uuid4())
        ref = {"change_id": change_id, "target": target, "checksum": "c" * 64}
        self.add("request.created", at, actor=requester, environment=environment, details={"request_id": request_id, "kind": "APPLY"}, **ref)
        if automatic:
            self.add(
                "request.approved",
                at,
                actor="policy",
                environment=environment,
                details={"request_id": request_id, "kind": "APPLY", "automatic": True, "final": True},
                **ref,
            )
        elif approver:
            details = {"request_id": request_id, "kind": "APPLY", "approvals": 1, "required": 1, "final": True}
            self.add("request.approved", at + timedelta(hours=3), actor=approver, environment=environment, details=details, **ref)
        self.add(
            "run.queued",
            at + timedelta(hours=4),
            actor=requester,
            environment=environment,
            run_id=run_id,
            details={"kind": "PIPELINE", "request_id": request_id},
        )
        self.add("change.started", at + timedelta(hours=4, minutes=1), environment=environment, run_id=run_id, state="STARTED", **ref)
        state = outcome.split(".")[1].upper()
        return self.add(outcome, at + timedelta(hours=4, minutes=2), environment=environment, run_id=run_id, state=state, **ref)

    def unrequested_change(self, at: datetime, change_id: str, *, environment: str = "prod") -> int:
        run_id = str(uuid.uuid4())
        ref = {"change_id": change_id, "target": "app-db", "checksum": "d" * 64}
        self.add("run.queued", at, actor="carol", environment=environment, run_id=run_id, details={"kind": "PIPELINE"})
        return self.add("change.applied", at + timedelta(minutes=1), environment=environment, run_id=run_id, state="APPLIED", **ref)

    def drift(self, at: datetime, finding: int, *, kind: str = "CHECKSUM_MISMATCH", acknowledged_after: timedelta | None = timedelta(hours=2)) -> int:
        details = {"finding": finding, "kind": kind, "check": "DEFINITION", "fingerprint": f"f{finding}"}
        seq = self.add("drift.detected", at, target="app-db", reason=f"drift {finding}", details={**details, "new": True})
        if acknowledged_after is not None:
            self.add("drift.acknowledged", at + acknowledged_after, actor="dana", target="app-db", reason="seen", details=details)
        return seq

    def break_glass(self, at: datetime, change_id: str, *, user: str = "erin", reviewers=("bob", "frank"), review_after=timedelta(hours=5)) -> int:
        """A break-glass use, its execution and its REVIEW request (approved by ``reviewers`` after ``review_after``)."""
        self.requests += 1
        review_id, run_id = self.requests, str(uuid.uuid4())
        ref = {"change_id": change_id, "target": "app-db", "checksum": "e" * 64}
        use = self.add(
            "break_glass.used", at, actor=user, details={"action": "apply", "change_id": change_id, "checksum": "e" * 64, "environment": "prod",
            "reason": "outage", "incident": "INC-1", "review_request_id": review_id}, **ref,
        )  # fmt: skip
        self.add("request.created", at, actor=user, details={"request_id": review_id, "kind": "REVIEW"}, **ref)
        self.add("run.queued", at + timedelta(minutes=1), actor=user, run_id=run_id, details={"kind": "PIPELINE"})
        self.add("change.applied", at + timedelta(minutes=2), run_id=run_id, state="APPLIED", **ref)
        for index, reviewer in enumerate(reviewers):
            final = index == len(reviewers) - 1
            details = {"request_id": review_id, "kind": "REVIEW", "approvals": index + 1, "required": 2, "final": final}
            self.add("request.approved", at + review_after + timedelta(minutes=index), actor=reviewer, details=details, **ref)
        return use


def quarter_clean(builder: TrailBuilder, start: datetime = Q1_START, end: datetime = Q1_END) -> None:
    """A quarter in which every control passes, between two signed checkpoints."""
    builder.grant(start - timedelta(days=20), "bob", "Approver")
    builder.add("run.started", start - timedelta(days=10))
    builder.save()
    builder.checkpoint(start - timedelta(days=9))
    builder.add("lock.acquired", start - timedelta(days=2))
    day, index = start, 0
    while day < end:
        builder.verified(day)
        if day.weekday() == 1:
            index += 1
            builder.change(day + timedelta(hours=3), f"c-{index:03d}")
        day += timedelta(days=1)
    builder.change(start + timedelta(days=5, hours=9), "c-staging", environment="staging", approver=None, automatic=True)
    builder.drift(start + timedelta(days=12), 1)
    builder.break_glass(start + timedelta(days=20), "c-emergency")
    builder.add("run.started", end + timedelta(hours=1))
    builder.save()
    builder.checkpoint(end + timedelta(days=1))


def quarter_with_exceptions(builder: TrailBuilder, start: datetime = Q1_START, end: datetime = Q1_END) -> None:
    """A quarter with one exception of each kind."""
    builder.grant(start - timedelta(days=20), "bob", "Approver")
    builder.save()
    builder.checkpoint(start - timedelta(days=9))
    day = start
    while day < end:
        if day != start + timedelta(days=30):  # a gap
            builder.verified(day, ok=day != start + timedelta(days=40))  # and a failure
        day += timedelta(days=1)
    builder.change(start + timedelta(days=2), "c-good")
    builder.change(start + timedelta(days=3), "c-self", approver="alice")  # approved by its requester
    builder.unrequested_change(start + timedelta(days=4), "c-unrequested")  # no request at all
    builder.drift(start + timedelta(days=5), 7, kind="applied_outside_governance")  # outside governance
    builder.drift(start + timedelta(days=6), 8, acknowledged_after=timedelta(days=3))  # acknowledged late
    builder.break_glass(start + timedelta(days=7), "c-late-review", review_after=timedelta(days=5))  # reviewed late
    builder.break_glass(start + timedelta(days=8), "c-self-review", reviewers=("erin", "bob"))  # reviewed by its user
    builder.add("run.started", end + timedelta(hours=1))
    builder.save()
    builder.checkpoint(end + timedelta(days=1))
