"""Signed checkpoints of the chain head (Ed25519).

The private key lives outside the database: ``FLAMINGOCK_AUDIT_SIGNING_KEY`` holds it (base64 of
the 32-byte raw key, or a PEM), or ``FLAMINGOCK_AUDIT_SIGNING_KEY_FILE`` names a file holding it.
In an unprotected environment with neither, a key file is created under var/ (mode 0600) so the
embedded demo works; a protected environment refuses to sign without a configured key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from audit_app.chain import timestamp_text


def _load(material: bytes) -> Ed25519PrivateKey:
    text = material.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(text, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured("the audit signing key must be an Ed25519 key")
        return key
    raw = base64.b64decode(text)
    if len(raw) != 32:
        raise ImproperlyConfigured("FLAMINGOCK_AUDIT_SIGNING_KEY must be base64 of a 32-byte Ed25519 private key")
    return Ed25519PrivateKey.from_private_bytes(raw)


def signing_key() -> Ed25519PrivateKey:
    configured = os.environ.get("FLAMINGOCK_AUDIT_SIGNING_KEY")
    if configured:
        return _load(configured.encode())
    path = os.environ.get("FLAMINGOCK_AUDIT_SIGNING_KEY_FILE")
    if path:
        return _load(Path(path).read_bytes())
    if settings.FLAMINGOCK_ENVIRONMENT in settings.FLAMINGOCK_PROTECTED_ENVIRONMENTS:
        raise ImproperlyConfigured(
            "this environment is protected: set FLAMINGOCK_AUDIT_SIGNING_KEY (or _FILE) to the Ed25519 key that signs audit checkpoints"
        )
    local = Path(settings.VAR_DIR) / "audit-signing.key"
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        descriptor = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(base64.b64encode(raw))
    return _load(local.read_bytes())


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def key_id(public_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:16]


def checkpoint_message(seq: int, entry_hash: str, created_at) -> bytes:
    return f"flamingock-checkpoint:v1:{seq}:{entry_hash}:{timestamp_text(created_at)}".encode()


def sign(message: bytes, key: Ed25519PrivateKey | None = None) -> tuple[str, str]:
    """(signature hex, public key hex)."""
    key = key or signing_key()
    return key.sign(message).hex(), public_key_hex(key)


def signature_valid(message: bytes, signature_hex: str, public_hex: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
