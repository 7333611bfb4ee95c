"""The same cache in Redis, shared by every gateway replica.

Each replica mirrors a namespace's vectors locally and refetches them only when the namespace's
version changes; search is exact (numpy) over that mirror.
"""

from __future__ import annotations

import json
import time

import numpy as np

from tiers.cache.store import Hit, Policy, text_hash

PREFIX = "trc"


class RedisCache:
    def __init__(self, url: str, dim: int):
        import redis

        self.dim = dim
        self.r = redis.Redis.from_url(url)
        self._mirror: dict[str, tuple[int, list[int], np.ndarray]] = {}

    @staticmethod
    def _k(ns: str, part: str) -> str:
        return f"{PREFIX}:ns:{ns}:{part}"

    def _vectors(self, ns: str) -> tuple[list[int], np.ndarray] | None:
        version = int(self.r.get(self._k(ns, "version")) or 0)
        cached = self._mirror.get(ns)
        if cached is None or cached[0] != version:
            raw = self.r.hgetall(self._k(ns, "vec"))
            if not raw:
                self._mirror.pop(ns, None)
                return None
            keys = [int(k) for k in raw]
            matrix = np.stack([np.frombuffer(v, dtype=np.float32) for v in raw.values()])
            self._mirror[ns] = cached = (version, keys, matrix)
        return cached[1], cached[2]

    def lookup(self, ns: str, text: str, vector_fn, policy: Policy) -> Hit | None:
        key = self.r.hget(self._k(ns, "exact"), text_hash(text))
        similarity = 1.0
        if key is None:
            if not self.r.exists(self._k(ns, "vec")):
                return None
            found = self._vectors(ns)
            if found is None:
                return None
            keys, matrix = found
            scores = matrix @ vector_fn()
            best = int(np.argmax(scores))
            if scores[best] < policy.threshold:
                return None
            key, similarity = keys[best], float(scores[best])
        key = int(key)
        meta, answer = self.r.hget(self._k(ns, "meta"), key), self.r.hget(self._k(ns, "answer"), key)
        if meta is None or answer is None:
            return None
        info = json.loads(meta)
        if info["expires_at"] <= time.time():
            self._drop(ns, key)
            return None
        self.r.zadd(self._k(ns, "lru"), {key: time.time()})
        return Hit(answer.decode(), similarity, info["request_id"])

    def insert(self, ns: str, text: str, vector: np.ndarray, answer: str, request_id: str, policy: Policy) -> None:
        digest = text_hash(text)
        old = self.r.hget(self._k(ns, "exact"), digest)
        if old is not None:
            self._drop(ns, int(old))
        key = int(self.r.incr(f"{PREFIX}:next"))
        size = len(answer.encode()) + vector.nbytes + len(text.encode())
        meta = json.dumps({"text_hash": digest, "request_id": request_id, "expires_at": time.time() + policy.ttl_s,
                           "size": size})
        feature = ns.split("|", 1)[0]
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k(ns, "meta"), key, meta)
        pipe.hset(self._k(ns, "answer"), key, answer)
        pipe.hset(self._k(ns, "vec"), key, np.asarray(vector, dtype=np.float32).tobytes())
        pipe.hset(self._k(ns, "exact"), digest, key)
        pipe.zadd(self._k(ns, "lru"), {key: time.time()})
        pipe.incrby(self._k(ns, "bytes"), size)
        pipe.incr(self._k(ns, "version"))
        pipe.sadd(f"{PREFIX}:feature:{feature}", ns)
        pipe.hset(f"{PREFIX}:req", request_id, f"{ns}\t{key}")
        pipe.execute()
        while (self.r.zcard(self._k(ns, "lru")) > policy.max_entries
               or int(self.r.get(self._k(ns, "bytes")) or 0) > policy.max_bytes):
            oldest = self.r.zrange(self._k(ns, "lru"), 0, 0)
            if not oldest:
                break
            self._drop(ns, int(oldest[0]))

    def invalidate_feature(self, feature: str) -> int:
        dropped = 0
        for ns in self.r.smembers(f"{PREFIX}:feature:{feature}"):
            ns = ns.decode()
            for key in self.r.zrange(self._k(ns, "lru"), 0, -1):
                self._drop(ns, int(key))
                dropped += 1
        self.r.delete(f"{PREFIX}:feature:{feature}")
        return dropped

    def invalidate_request(self, request_id: str) -> bool:
        found = self.r.hget(f"{PREFIX}:req", request_id)
        if found is None:
            return False
        ns, key = found.decode().split("\t")
        self._drop(ns, int(key))
        return True

    def stats(self) -> dict:
        entries = namespaces = total = 0
        for key in self.r.scan_iter(f"{PREFIX}:ns:*:lru"):
            ns = key.decode()[len(PREFIX) + 4:-4]
            namespaces += 1
            entries += self.r.zcard(key)
            total += int(self.r.get(self._k(ns, "bytes")) or 0)
        return {"entries": entries, "bytes": total, "namespaces": namespaces}

    def _drop(self, ns: str, key: int) -> None:
        meta = self.r.hget(self._k(ns, "meta"), key)
        pipe = self.r.pipeline(transaction=True)
        if meta is not None:
            info = json.loads(meta)
            pipe.decrby(self._k(ns, "bytes"), info["size"])
            pipe.hdel(f"{PREFIX}:req", info["request_id"])
            exact = self.r.hget(self._k(ns, "exact"), info["text_hash"])
            if exact is not None and int(exact) == key:
                pipe.hdel(self._k(ns, "exact"), info["text_hash"])
        pipe.hdel(self._k(ns, "meta"), key)
        pipe.hdel(self._k(ns, "answer"), key)
        pipe.hdel(self._k(ns, "vec"), key)
        pipe.zrem(self._k(ns, "lru"), key)
        pipe.incr(self._k(ns, "version"))
        pipe.execute()
