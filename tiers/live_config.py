"""The routing table and the profile in force, reloaded when their files change or on `POST /admin/reload`.

Reloads are serialised: the file watcher and the admin endpoint never swap the same tier twice at
once. A bad routing file is rejected and the old table keeps serving; so is a profile whose new
runner does not start. The watcher survives any error and keeps watching; each rejected file is
tried again only after it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from hardware.errors import ConfigError
from runners.errors import InvalidRequest
from tiers.routing import RoutingTable, load_routing
from tiers.tier_runners import TierRunners

log = logging.getLogger("tier_runner.reload")


class ReloadRejected(InvalidRequest):
    code = "invalid_config"


class LiveConfig:
    def __init__(self, routing_path: Path, runners: TierRunners, interval_s: float = 1.0,
                 check: Callable[[RoutingTable], None] | None = None):
        """`check` raises ConfigError for a table this server cannot serve (a cache that needs a missing extra)."""
        self.routing_path = Path(routing_path)
        self.check = check or (lambda table: None)
        self.routing: RoutingTable = load_routing(self.routing_path)
        self.check(self.routing)
        self.runners = runners
        self.interval_s = interval_s
        self._stamps = {"routing": file_stamp(self.routing_path), "profile": file_stamp(runners.path)}
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None

    def start_watching(self) -> None:
        if self.interval_s > 0:
            self._watcher = asyncio.create_task(self._watch())

    async def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def reload_routing(self) -> RoutingTable:
        """Swap in the routing table from disk; a bad file is rejected and the old table keeps serving."""
        async with self._lock:
            self._stamps["routing"] = file_stamp(self.routing_path)
            try:
                table = await asyncio.to_thread(load_routing, self.routing_path)
                self.check(table)
            except ConfigError as exc:
                log.error("routing reload rejected, the previous table keeps serving: %s", exc.message)
                raise ReloadRejected(f"reload rejected, the previous table keeps serving: {exc.message}") from None
            self.routing = table
            log.info("routing table reloaded from %s: %d features", self.routing_path, len(table.features))
            return table

    async def reload_profile(self) -> list[int]:
        """Swap in new runners for the tiers whose placement changed (a promoted model)."""
        async with self._lock:
            self._stamps["profile"] = file_stamp(self.runners.path)
            try:
                return await self.runners.swap_changed()
            except Exception as exc:  # a ConfigError, or whatever a new runner's start raised
                why = exc.message if isinstance(exc, ConfigError) else f"{exc.__class__.__name__}: {exc}"
                log.error("profile reload rejected, the previous runners keep serving: %s", why)
                raise ReloadRejected(f"profile reload rejected, the previous runners keep serving: {why}") from None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if file_stamp(self.routing_path) != self._stamps["routing"]:
                    await self.reload_routing()
                if file_stamp(self.runners.path) != self._stamps["profile"]:
                    await self.reload_profile()
            except ReloadRejected:
                pass  # already logged; the old configuration keeps serving
            except Exception:  # the watcher must outlive anything a reload throws
                log.exception("configuration reload failed; the previous configuration keeps serving")


def file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
