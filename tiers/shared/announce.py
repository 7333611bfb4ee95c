"""`POST /admin/reload` on one replica, announced to the others over Redis pub/sub, so every replica re-reads at once.

Each replica reads its own copy of the routing table and profile. Its file watcher (`--reload-interval`)
notices edits of that copy by itself; the announcement is for the rest: copies deployed without a change
the watcher sees, watchers turned off (`--reload-interval 0`), or an operator who wants every replica on
the new table now rather than within the interval. A replica that misses an announcement (Redis down, the
replica restarting) still has its watcher, and reads its files at start. A reload a replica rejects (its
copy is bad) keeps its old configuration there, as on the replica that was asked, and is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging

from tiers.live_config import LiveConfig, ReloadRejected
from tiers.shared.state import SharedState, SharedUnavailable

log = logging.getLogger("tier_runner.shared")


class ReloadAnnouncer:
    def __init__(self, shared: SharedState, config: LiveConfig):
        import redis.asyncio as aioredis

        self.shared, self.config = shared, config
        self.channel = shared.key("reload")
        # Its own connection: a subscriber blocks reading, which the request path's short timeouts would break.
        self._listener = aioredis.Redis.from_url(shared.url, socket_connect_timeout=1.0)
        self._task: asyncio.Task | None = None
        self.received = 0

    async def announce(self) -> int | None:
        """Tell the other replicas to reload; how many heard it, or None when Redis did not answer."""
        message = json.dumps({"from": self.shared.replica_id, "what": "reload"})
        try:
            heard = await self.shared.call("announce", lambda: self.shared.redis.publish(self.channel, message))
        except SharedUnavailable:
            log.warning("reload: not announced to the other replicas (Redis is not answering); their file "
                        "watchers still pick up edited files")
            return None
        return max(0, int(heard) - 1)  # less this replica's own subscription

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._listener.aclose()

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        while True:
            try:
                async with self._listener.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            await self._heard(message["data"])
            except (RedisError, OSError):  # an outage: /ready shows it through the shared state; subscribe again
                await asyncio.sleep(1.0)

    async def _heard(self, data: bytes) -> None:
        try:
            sender = json.loads(data).get("from")
        except (ValueError, AttributeError):
            return
        if sender == self.shared.replica_id:
            return
        self.received += 1
        log.info("reload announced by replica %s: re-reading the routing table and profile", sender)
        try:
            await self.config.reload_routing()
            await self.config.reload_profile()
        except ReloadRejected:
            pass  # logged by LiveConfig; this replica keeps its configuration
        except Exception:  # the listener must outlive anything a reload throws
            log.exception("announced reload failed; the previous configuration keeps serving")
