"""Client API keys: who may call which feature, how fast, and for how much. Keys are stored as hashes.

A keys file (YAML) lists each key's sha256, its features, whether it may use `tier:<n>` directly, a
rate limit (requests and tokens per minute, token buckets) and an optional spend cap. Without a keys
file the server is keyless, which it allows only on a loopback address. The buckets live in this
process (`LocalLimiter`), or, with `--redis-url`, in Redis for every replica (tiers/shared/limits.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware.config import load_yaml_model
from hardware.errors import ConfigError
from tiers.errors import Forbidden, RateLimited, Unauthorized
from tiers.budgets import Limit, period_end
from tiers.routing import Route

SHA256 = r"^[0-9a-f]{64}$"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1, description="prompt + completion tokens")


class SpendCap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: float = Field(gt=0)
    period: Literal["day", "week", "month"] = "month"


class ClientKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="name recorded in the ledger")
    sha256: str = Field(pattern=SHA256, description="sha256 of the key; `tier-runner keys new` makes both")
    features: list[str] = Field(default_factory=lambda: ["*"], description="feature names, or * for all")
    direct_tiers: bool = Field(default=False, description="may call tier:<n> without a feature")
    rate_limit: RateLimit | None = None
    spend_cap: SpendCap | None = None
    on_redis_outage: Literal["fail_open", "fail_closed"] = Field(default="fail_open", description=(
        "with --redis-url, when Redis does not answer: fail_open enforces this key's limits on each replica alone "
        "(so N replicas may grant up to N times its rate), fail_closed refuses its requests with 503 "
        "limits_unavailable until Redis answers"))

    def may_call(self, route: Route) -> bool:
        if route.feature is None:
            return self.direct_tiers
        return "*" in self.features or route.feature in self.features

    def spend_limits(self) -> list[Limit]:
        """The spend cap as a limit the recorder admits requests against (tiers/recorder.py)."""
        cap = self.spend_cap
        if cap is None:
            return []

        def refuse(spent: float) -> RateLimited:
            return RateLimited(f"key {self.id!r} has spent ${spent:.4f} of its ${cap.usd:.2f} {cap.period}ly cap",
                               retry_after=max(1.0, period_end(cap.period) - time.time()), code="spend_cap_exceeded")

        return [Limit("client_key_id", self.id, cap.period, cap.usd, refuse)]


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admin_sha256: str | None = Field(default=None, pattern=SHA256, description="sha256 of the admin key")
    keys: list[ClientKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        ids = [k.id for k in self.keys]
        if len(ids) != len(set(ids)):
            raise ValueError("key ids must be unique")
        hashes = [k.sha256 for k in self.keys] + ([self.admin_sha256] if self.admin_sha256 else [])
        if len(hashes) != len(set(hashes)):
            raise ValueError("each key (and the admin key) needs its own secret")
        return self


class TokenBucket:
    """`rate` units per minute, holding at most one minute's worth; may go negative after a charge."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is)."""
        self._refill()
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def over_limit(key: ClientKey, kind: str, wait: float) -> RateLimited:
    limit = key.rate_limit
    per_minute = limit.requests_per_minute if kind == "requests" else limit.tokens_per_minute
    return RateLimited(f"key {key.id!r} is over {per_minute} {kind} per minute", retry_after=wait)


class LocalLimiter:
    """Each key's request and token buckets in this process: the limiter of one gateway, and what a replica
    falls back to when the shared one (Redis) does not answer."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    async def admit(self, key: ClientKey) -> None:
        """The request bucket (one request taken) and the token bucket (at least one token left)."""
        limit = key.rate_limit
        with self._lock:
            if limit.requests_per_minute:
                bucket = self._bucket(key.id, "requests", limit.requests_per_minute)
                wait = bucket.wait_for(1)
                if wait > 0:
                    raise over_limit(key, "requests", wait)
                bucket.take(1)
            if limit.tokens_per_minute:
                wait = self._bucket(key.id, "tokens", limit.tokens_per_minute).wait_for(1)
                if wait > 0:
                    raise over_limit(key, "tokens", wait)

    def took(self, key: ClientKey) -> None:
        """A request the shared limiter admitted: this replica's own buckets follow its share of the traffic."""
        if key.rate_limit.requests_per_minute:
            with self._lock:
                self._bucket(key.id, "requests", key.rate_limit.requests_per_minute).take(1)

    def charge(self, key: ClientKey, tokens: int) -> None:
        with self._lock:
            self._bucket(key.id, "tokens", key.rate_limit.tokens_per_minute).take(tokens)

    def _bucket(self, key_id: str, kind: str, per_minute: int) -> TokenBucket:
        bucket = self._buckets.get((key_id, kind))
        if bucket is None or bucket.capacity != per_minute:
            bucket = self._buckets[(key_id, kind)] = TokenBucket(per_minute)
        return bucket


class Access:
    def __init__(self, keys: KeysFile | None, limiter=None):
        self.keys = keys
        self._by_hash = {k.sha256: k for k in keys.keys} if keys else {}
        self.limiter = limiter or LocalLimiter()  # or tiers.shared.limits.SharedLimiter: the same three calls

    @classmethod
    def from_file(cls, path: Path | None, limiter=None) -> Access:
        return cls(load_yaml_model(path, KeysFile) if path else None, limiter)

    @property
    def keyless(self) -> bool:
        return self.keys is None

    def check_bind(self, host: str) -> None:
        if self.keyless and not is_loopback(host):
            raise ConfigError(f"refusing to serve {host} without client keys: anyone on the network could call "
                              f"every tier. Pass --keys FILE (see `tier-runner keys new`), or bind 127.0.0.1")

    def authenticate(self, secret: str | None) -> ClientKey | None:
        """The caller's key; None when keyless. The secret itself is never stored, logged or echoed."""
        if self.keyless:
            return None
        if not secret:
            raise Unauthorized("no API key: send it as `Authorization: Bearer <key>`")
        key = self._by_hash.get(hash_key(secret))
        if key is None:
            raise Unauthorized("invalid API key")
        return key

    def require_admin(self, secret: str | None) -> None:
        if self.keyless:
            return
        if not secret:
            raise Unauthorized("admin endpoints need the admin key: `Authorization: Bearer <admin key>`")
        if self.keys.admin_sha256 is None:
            raise Forbidden("no admin key is configured; add admin_sha256 to the keys file")
        if not hmac.compare_digest(hash_key(secret), self.keys.admin_sha256):
            if hash_key(secret) in self._by_hash:
                raise Forbidden("this client key may not use admin endpoints")
            raise Unauthorized("invalid admin key")

    async def admit(self, key: ClientKey | None, route: Route) -> None:
        """Feature access, then the request bucket and the token bucket, before any work (the spend cap is
        checked and reserved with the feature's budget: Recorder.admit)."""
        if key is None:
            return
        if not key.may_call(route):
            what = f"feature {route.feature!r}" if route.feature else f"direct use of {route.label}"
            raise Forbidden(f"key {key.id!r} may not call {what}; ask for it to be added to the key's features")
        limit = key.rate_limit
        if limit and (limit.requests_per_minute or limit.tokens_per_minute):
            await self.limiter.admit(key)

    def charge(self, key: ClientKey | None, tokens: int) -> None:
        if key is None or not key.rate_limit or not key.rate_limit.tokens_per_minute:
            return
        self.limiter.charge(key, tokens)
