"""Tenants and API keys: a key is shown once when made; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from service_core.models import ApiKey, Tenant

KEY_PREFIX = "grpo_"


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, *, tenant_name: str) -> str:
    """Create the tenant if it is new and a key for it. The key is returned once; only its hash is stored."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, prefix=key[: len(KEY_PREFIX) + 8], key_hash=_hash_key(key)))
    session.flush()
    return key


class RecentKeys:
    """Keys this process checked lately, by hash, with their tenant: a request with a known key then needs no
    database lookup (and no hop to a worker thread for it). Only keys that passed are kept, for `ttl` seconds,
    so a key removed from the database stops working within that time. Bounded: emptied when full."""

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._tenants: dict[str, tuple[str, float]] = {}

    def get(self, key: str, ttl: float) -> str | None:
        entry = self._tenants.get(_hash_key(key))
        if entry is None or time.monotonic() - entry[1] > ttl:
            return None
        return entry[0]

    def put(self, key: str, tenant_id: str) -> None:
        if len(self._tenants) >= self.max_entries:
            self._tenants.clear()
        self._tenants[_hash_key(key)] = (tenant_id, time.monotonic())

    def clear(self) -> None:
        self._tenants.clear()


recent_keys = RecentKeys()


def authenticate(session: Session, *, key: str) -> str | None:
    """The tenant id a key belongs to, or None. Compared in constant time against each candidate's hash."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    presented = _hash_key(key)
    candidates = session.execute(
        select(ApiKey.key_hash, ApiKey.tenant_id).where(ApiKey.prefix == key[: len(KEY_PREFIX) + 8])
    )
    for key_hash, tenant_id in candidates:
        if hmac.compare_digest(key_hash, presented):
            return tenant_id
    return None
