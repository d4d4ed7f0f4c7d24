"""Telling people about drift: e-mail and webhooks, for new and reopened findings only.

A webhook delivery is a row (visible in the admin) sent by a Celery task; a failed attempt is
retried with exponential backoff until it is delivered or gives up. The JSON body is signed with
HMAC-SHA256 under the ``FLAMINGOCK_WEBHOOK_SECRET`` environment variable, so a receiver can prove
the message came from this instance: ``X-Flamingock-Signature: sha256=<hex of hmac(secret, body)>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from changes_app.drift.findings import finding_as_dict
from changes_app.governance.permissions import OPERATE, users_with
from changes_app.models import Finding, TargetSystem, WebhookDelivery
from changes_app.services.notifications import addresses_of, admin_url, mail_each, never_raises
from changes_app.services.queue import task_send

logger = logging.getLogger("flamingock.notifications")

#: Seconds before the first retry; each later one waits twice as long, up to the cap.
BACKOFF_BASE = 30
BACKOFF_CAP = 3600
MAX_ATTEMPTS = 8
REQUEST_TIMEOUT = 10


def backoff_seconds(attempts: int) -> int:
    """The wait after the ``attempts``-th failed attempt: 30 s, 60 s, 120 s... up to an hour."""
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_CAP)


def webhook_body(payload: dict) -> bytes:
    """The exact bytes sent and signed: canonical JSON."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def webhook_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def finding_payload(finding: Finding) -> dict:
    return {
        "event": "drift.detected",
        "finding": finding_as_dict(finding),
        "url": admin_url(f"/admin/changes_app/finding/{finding.pk}/change/"),
    }


@never_raises
def finding_notify(*, finding_id: int) -> int:
    """E-mail the operators of the finding's target (and ADMINS), and queue one webhook delivery
    per configured URL. Called after the commit that opened or reopened the finding."""
    finding = Finding.objects.filter(pk=finding_id).first()
    if finding is None or not finding.active:
        return 0
    sent = _finding_mail(finding)
    urls = settings.FLAMINGOCK_WEBHOOK_URLS
    if urls:
        payload = finding_payload(finding)
        with transaction.atomic():
            deliveries = [WebhookDelivery.objects.create(finding=finding, url=url, payload=payload) for url in urls]
        for delivery in deliveries:
            task_send("flamingock.webhook_deliver", args=[delivery.pk])
        sent += len(deliveries)
    return sent


@never_raises
def findings_notify_grouped(*, target: str, finding_ids: list[int]) -> int:
    """One notification for many findings of a target group's members (the member drift check):
    one e-mail to the group's operators (and ADMINS) listing them, and one webhook delivery per
    configured URL carrying them all, instead of one per member."""
    findings = list(Finding.objects.filter(pk__in=finding_ids, status__in=Finding.ACTIVE).order_by("member", "change_id", "kind"))
    if not findings:
        return 0
    first = findings[0]
    recipients = {address for _, address in settings.ADMINS}
    group = TargetSystem.objects.filter(name=target).first()
    if group is not None:
        recipients.update(addresses_of(users_with(permission=OPERATE, target=group)))
    members = sorted({finding.member for finding in findings})
    subject = f"[flamingock {first.environment}] drift on {len(members)} member(s) of {target}: {len(findings)} finding(s)"
    lines = [f"{finding.member}: {finding.get_kind_display()} ({finding.change_id}): {finding.summary}" for finding in findings]
    lines += ["", f"Acknowledge or resolve them: {admin_url('/admin/changes_app/finding/')}?target={target}"]
    sent = mail_each(subject, "\n".join(lines), sorted(recipients))
    urls = settings.FLAMINGOCK_WEBHOOK_URLS
    if urls:
        payload = {
            "event": "drift.detected",
            "target": target,
            "members": members,
            "findings": [finding_as_dict(finding) for finding in findings],
            "url": admin_url("/admin/changes_app/finding/"),
        }
        with transaction.atomic():
            # A delivery row hangs on a finding: the batch's first one carries them all.
            deliveries = [WebhookDelivery.objects.create(finding=first, url=url, payload=payload) for url in urls]
        for delivery in deliveries:
            task_send("flamingock.webhook_deliver", args=[delivery.pk])
        sent += len(deliveries)
    return sent


def _finding_mail(finding: Finding) -> int:
    recipients = {address for _, address in settings.ADMINS}
    target = TargetSystem.objects.filter(name=finding.target).first() if finding.target else None
    if target is not None:
        recipients.update(addresses_of(users_with(permission=OPERATE, target=target)))
    subject = f"[flamingock {finding.environment}] drift: {finding.get_kind_display()}" + (f" ({finding.change_id})" if finding.change_id else "")
    lines = [
        finding.summary,
        "",
        f"Seen first {finding.first_seen:%Y-%m-%d %H:%M:%S} UTC, last {finding.last_seen:%Y-%m-%d %H:%M:%S} UTC, {finding.times_seen} time(s).",
        f"Evidence: {json.dumps(finding.last_evidence, sort_keys=True, default=str)}",
        "",
        f"Acknowledge or resolve it: {admin_url(f'/admin/changes_app/finding/{finding.pk}/change/')}",
    ]
    return mail_each(subject, "\n".join(lines), sorted(recipients))


def webhook_deliver(*, delivery_id: int) -> int | None:
    """One attempt. Returns the seconds to wait before the next attempt, or None when there is
    nothing more to do (delivered, given up, or not due)."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None or delivery.status in (WebhookDelivery.Status.DELIVERED, WebhookDelivery.Status.FAILED):
            return None
        delivery.attempts += 1
        delivery.save(update_fields=["attempts"])
    body = webhook_body(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "flamingock-drift",
        "X-Flamingock-Event": delivery.payload.get("event", "drift.detected"),
        "X-Flamingock-Delivery": str(delivery.pk),
    }
    # Read at send time, from the environment only: the secret never sits in settings or rows.
    secret = os.environ.get("FLAMINGOCK_WEBHOOK_SECRET", "")
    if secret:
        headers["X-Flamingock-Signature"] = webhook_signature(body, secret)
    status_code, error = None, ""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(delivery.url, data=body, headers=headers, method="POST"), timeout=REQUEST_TIMEOUT
        ) as response:
            status_code = response.status
    except urllib.error.HTTPError as failure:
        status_code, error = failure.code, f"HTTP {failure.code}: {failure.reason}"
    except Exception as failure:  # unreachable, timed out, refused: retried like a 5xx
        error = f"{type(failure).__name__}: {failure}"
    now = timezone.now()
    delivery.last_status_code = status_code
    if status_code is not None and 200 <= status_code < 300:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at, delivery.last_error = WebhookDelivery.Status.DELIVERED, now, None, ""
        delivery.save(update_fields=["status", "delivered_at", "next_attempt_at", "last_error", "last_status_code"])
        return None
    delivery.last_error = error
    if delivery.attempts >= MAX_ATTEMPTS:
        delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.FAILED, None
        logger.warning("webhook delivery %s to %s gave up after %s attempts: %s", delivery.pk, delivery.url, delivery.attempts, error)
        wait = None
    else:
        wait = backoff_seconds(delivery.attempts)
        delivery.status, delivery.next_attempt_at = WebhookDelivery.Status.RETRYING, now + timedelta(seconds=wait)
    delivery.save(update_fields=["status", "next_attempt_at", "last_error", "last_status_code"])
    return wait


def webhooks_due() -> list[int]:
    """Deliveries whose retry is overdue (a lost task): the periodic drift task queues them again."""
    late = timezone.now() - timedelta(seconds=BACKOFF_BASE)
    return list(
        WebhookDelivery.objects.filter(status__in=[WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING])
        .filter(next_attempt_at__lt=late)
        .values_list("pk", flat=True)
    )
