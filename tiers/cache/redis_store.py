"""The same cache in Redis, shared by every gateway replica.

Every change is one Lua script (tiers/cache/redis_scripts.py), so a lookup never reads an entry that
an invalidation on any replica has begun to remove, and the served-to map lives in Redis too: feedback
or `DELETE /admin/cache/<id>` on any replica finds an answer another replica served. Each replica
mirrors a namespace's vectors locally and refetches them only when the namespace's version changes;
search is exact (numpy) over that mirror.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from tiers.cache import redis_scripts
from tiers.cache.store import Hit, Limits, Policy, entry_size, feature_of, text_hash

PREFIX = "trc:v2"
TIMEOUT_S = 2.0  # a Redis that does not answer costs a request this much at most, then it is served uncached
SWEEP_BATCH = 500


class RedisCache:
    def __init__(self, url: str, limits: Limits = Limits()):
        import redis

        self.limits = limits
        self.r = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        self._scripts = {name: self.r.register_script(getattr(redis_scripts, name))
                         for name in ("LOOKUP", "INSERT", "INVALIDATE_FEATURE", "INVALIDATE_REQUEST", "SWEEP")}
        self._mirror: OrderedDict[str, tuple[int, list[str], np.ndarray]] = OrderedDict()  # least recent first
        self._mirrored = 0
        self._mirror_lock = threading.Lock()  # lookups run in worker threads

    def _run(self, name: str, *args) -> object:
        return self._scripts[name](args=[PREFIX, *args])

    def _k(self, ns: str, part: str) -> str:
        return f"{PREFIX}:ns:{ns}:{part}"

    def _vectors(self, ns: str) -> tuple[list[str], np.ndarray] | None:
        """This namespace's keys and vectors, refetched only when its version moved; the mirror is an LRU
        that holds no more vectors than the cache holds entries."""
        with self._mirror_lock:
            version = int(self.r.get(self._k(ns, "ver")) or 0)
            cached = self._mirror.pop(ns, None)
            if cached is not None:
                self._mirrored -= len(cached[1])
            if cached is None or cached[0] != version:
                raw = self.r.hgetall(self._k(ns, "vec"))
                if not raw:
                    return None
                cached = (version, [k.decode() for k in raw], np.stack([np.frombuffer(v, dtype=np.float32)
                                                                        for v in raw.values()]))
            self._mirror[ns] = cached
            self._mirrored += len(cached[1])
            while self._mirrored > self.limits.max_entries and len(self._mirror) > 1:
                self._mirrored -= len(self._mirror.pop(next(iter(self._mirror)))[1])
            return cached[1], cached[2]

    def generation(self, feature: str) -> int:
        return int(self.r.get(f"{PREFIX}:f:{feature}:gen") or 0)

    def lookup(self, ns: str, text: str, vector_fn, policy: Policy, served_to: str | None = None) -> Hit | None:
        digest, served = text_hash(text), served_to or ""
        found = self._run("LOOKUP", ns, digest, "", time.time(), served)
        if found:
            return Hit(found[0].decode(), 1.0, found[1].decode())
        mirror = self._vectors(ns)
        if mirror is None:
            return None
        keys, matrix = mirror
        scores = matrix @ vector_fn()
        best = int(np.argmax(scores))
        if scores[best] < policy.threshold:
            return None
        found = self._run("LOOKUP", ns, digest, keys[best], time.time(), served)
        return Hit(found[0].decode(), float(scores[best]), found[1].decode()) if found else None

    def insert(self, ns: str, text: str, vector: np.ndarray, answer: str, request_id: str, policy: Policy,
               generation: int | None = None) -> bool:
        vector = np.asarray(vector, dtype=np.float32)
        key = self._run("INSERT", ns, feature_of(ns), text_hash(text), request_id, answer, vector.tobytes(),
                        entry_size(answer, vector, text), time.time(), policy.ttl_s,
                        "" if generation is None else generation, policy.max_entries, policy.max_bytes,
                        self.limits.max_entries, self.limits.max_bytes)
        return int(key) >= 0

    def invalidate_feature(self, feature: str) -> int:
        return int(self._run("INVALIDATE_FEATURE", feature))

    def invalidate_request(self, request_id: str) -> bool:
        return bool(self._run("INVALIDATE_REQUEST", request_id))

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        total = 0
        while True:
            dropped = int(self._run("SWEEP", now, SWEEP_BATCH))
            total += dropped
            if dropped < SWEEP_BATCH:
                return total

    def stats(self) -> dict:
        pipe = self.r.pipeline(transaction=True)
        pipe.zcard(f"{PREFIX}:lru")
        pipe.get(f"{PREFIX}:bytes")
        pipe.scard(f"{PREFIX}:nss")
        entries, total, namespaces = pipe.execute()
        return {"entries": entries, "bytes": int(total or 0), "namespaces": namespaces}
