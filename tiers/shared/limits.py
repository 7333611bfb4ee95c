"""Client keys' rate limits in Redis: one pair of token buckets per key for every replica, checked and taken in one
script (tiers/shared/scripts.py), so a key limited to 30 requests a minute gets 30 across any number of gateways.

The semantics are the local buckets' (tiers/auth.py): a request takes one from the request bucket; the token
bucket must hold at least one token to admit, and is charged the request's tokens when it has been answered.
This replica's own buckets follow its share of the traffic all along, so when Redis does not answer a
fail_open key is limited here alone, from where it stood; a fail_closed key is refused with 503.
"""

from __future__ import annotations

import logging

from tiers.auth import ClientKey, LocalLimiter, over_limit
from tiers.errors import LimitsUnavailable
from tiers.shared.state import SharedState, SharedUnavailable

log = logging.getLogger("tier_runner.shared")


def outage(shared: SharedState, key: ClientKey, why: SharedUnavailable) -> None:
    """What a key's `on_redis_outage` says to do now: raise for fail_closed; count either way."""
    if key.on_redis_outage == "fail_closed":
        shared.decided("fail_closed")
        raise LimitsUnavailable(f"key {key.id!r}'s limits are kept in Redis, which is not answering ({why}), and "
                                "the key is fail_closed; retry shortly (GET /ready shows shared_state)",
                                retry_after=shared.breaker.cooldown_s)
    shared.decided("fail_open")


class SharedLimiter:
    def __init__(self, shared: SharedState, local: LocalLimiter | None = None):
        self.shared = shared
        self.local = local or LocalLimiter()

    def _keys(self, key: ClientKey) -> list[str]:
        return [self.shared.key("rate", key.id, "requests"), self.shared.key("rate", key.id, "tokens")]

    async def admit(self, key: ClientKey) -> None:
        limit = key.rate_limit
        try:
            verdict = await self.shared.script("rate_limit", "RATE_ADMIT", self._keys(key),
                                               [limit.requests_per_minute or 0, limit.tokens_per_minute or 0])
        except SharedUnavailable as why:
            outage(self.shared, key, why)
            await self.local.admit(key)
            return
        if int(verdict[0]) == 0:
            raise over_limit(key, verdict[2].decode(), float(verdict[1]))
        self.local.took(key)

    def charge(self, key: ClientKey, tokens: int) -> None:
        self.local.charge(key, tokens)
        if tokens <= 0:
            return
        keys, per_minute = self._keys(key)[1:], key.rate_limit.tokens_per_minute
        self.shared.later("rate_limit", self.shared.work("RATE_CHARGE", keys, [per_minute, tokens]))
