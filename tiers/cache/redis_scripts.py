"""The Redis backend's operations as Lua scripts: each runs atomically, so no reader sees half an entry.

Layout under the prefix P (one schema version per prefix; a new layout takes a new prefix):
  P:e:<key>            hash: ns, f (feature), h (text hash), rid, exp, size, ans
  P:ns:<ns>:exact      hash: text hash -> key          P:ns:<ns>:vec  hash: key -> float32 vector
  P:ns:<ns>:ver        a globally unique number, new at every change (replicas refetch vectors on change)
  P:lru, P:exp         zsets over every key: last use, expiry       P:bytes  bytes over every entry
  P:f:<f>:lru          zset of a feature's keys by last use         P:f:<f>:bytes, P:f:<f>:gen
  P:nss                set of live namespaces     P:req  hash: request id -> key
  P:served:<rid>       the source request id of an answer served to <rid>, until the entry expires
"""

from __future__ import annotations

# drop(key): remove one entry and everything that points at it; a namespace goes with its last entry.
_DROP = """
local P = ARGV[1]
local function drop(key)
  local e = P .. ':e:' .. key
  local v = redis.call('HMGET', e, 'ns', 'f', 'h', 'rid', 'size')
  redis.call('ZREM', P .. ':lru', key)
  redis.call('ZREM', P .. ':exp', key)
  if not v[1] then return 0 end
  local nsk, fk, size = P .. ':ns:' .. v[1], P .. ':f:' .. v[2], tonumber(v[5])
  if redis.call('HGET', nsk .. ':exact', v[3]) == key then redis.call('HDEL', nsk .. ':exact', v[3]) end
  redis.call('HDEL', nsk .. ':vec', key)
  redis.call('SET', nsk .. ':ver', redis.call('INCR', P .. ':ver'))
  redis.call('ZREM', fk .. ':lru', key)
  redis.call('DECRBY', fk .. ':bytes', size)
  redis.call('DECRBY', P .. ':bytes', size)
  if redis.call('HGET', P .. ':req', v[4]) == key then redis.call('HDEL', P .. ':req', v[4]) end
  redis.call('DEL', e)
  if redis.call('HLEN', nsk .. ':vec') == 0 then
    redis.call('DEL', nsk .. ':exact', nsk .. ':vec', nsk .. ':ver')
    redis.call('SREM', P .. ':nss', v[1])
  end
  if redis.call('ZCARD', fk .. ':lru') == 0 then redis.call('DEL', fk .. ':lru', fk .. ':bytes') end
  return 1
end
"""

# Reads run when Redis is out of memory (a hit's touch may then fail; the hit is still served).
_READER = "#!lua flags=allow-oom\n" + _DROP
# Writes that add data are refused whole, before they start, when Redis is out of memory.
_WRITER = "#!lua\n" + _DROP

# ARGV: P, ns, text hash, key ('' = by text hash), now, served-to request id ('' = none)
LOOKUP = _READER + """
local ns, now, served = ARGV[2], tonumber(ARGV[5]), ARGV[6]
local key = ARGV[4]
if key == '' then
  key = redis.call('HGET', P .. ':ns:' .. ns .. ':exact', ARGV[3])
  if not key then return false end
end
local v = redis.call('HMGET', P .. ':e:' .. key, 'ns', 'f', 'ans', 'rid', 'exp')
if v[1] ~= ns then return false end
local exp = tonumber(v[5])
if exp <= now then drop(key) return false end
redis.pcall('ZADD', P .. ':lru', 'XX', now, key)
redis.pcall('ZADD', P .. ':f:' .. v[2] .. ':lru', 'XX', now, key)
if served ~= '' then
  redis.pcall('SET', P .. ':served:' .. served, v[4], 'PX', math.max(1, math.floor((exp - now) * 1000)))
end
return {v[3], v[4]}
"""

# ARGV: P, ns, feature, text hash, request id, answer, vector, size, now, ttl, generation ('' = any),
#       feature max entries, feature max bytes, cache max entries, cache max bytes. Returns the key, or -1
#       when the feature was invalidated after `generation` was read.
INSERT = _WRITER + """
local ns, f, h, rid = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local size, now, exp = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[9]) + tonumber(ARGV[10])
local nsk, fk = P .. ':ns:' .. ns, P .. ':f:' .. f
if ARGV[11] ~= '' and (redis.call('GET', fk .. ':gen') or '0') ~= ARGV[11] then return -1 end
local old = redis.call('HGET', nsk .. ':exact', h)
if old then drop(old) end
local key = tostring(redis.call('INCR', P .. ':next'))
redis.call('HSET', P .. ':e:' .. key, 'ns', ns, 'f', f, 'h', h, 'rid', rid, 'exp', exp, 'size', size, 'ans', ARGV[6])
redis.call('HSET', nsk .. ':exact', h, key)
redis.call('HSET', nsk .. ':vec', key, ARGV[7])
redis.call('SET', nsk .. ':ver', redis.call('INCR', P .. ':ver'))
redis.call('ZADD', P .. ':lru', now, key)
redis.call('ZADD', P .. ':exp', exp, key)
redis.call('ZADD', fk .. ':lru', now, key)
redis.call('INCRBY', fk .. ':bytes', size)
redis.call('INCRBY', P .. ':bytes', size)
redis.call('SADD', P .. ':nss', ns)
redis.call('HSET', P .. ':req', rid, key)
local function evict(lru, bytes, max_entries, max_bytes)
  while redis.call('ZCARD', lru) > max_entries or tonumber(redis.call('GET', bytes) or '0') > max_bytes do
    local oldest = redis.call('ZRANGE', lru, 0, 0)
    if #oldest == 0 then return end
    drop(oldest[1])
  end
end
evict(fk .. ':lru', fk .. ':bytes', tonumber(ARGV[12]), tonumber(ARGV[13]))
evict(P .. ':lru', P .. ':bytes', tonumber(ARGV[14]), tonumber(ARGV[15]))
return tonumber(key)
"""

# ARGV: P, feature. Bumps the generation first, so a store that began before this is refused.
INVALIDATE_FEATURE = _READER + """
local fk = P .. ':f:' .. ARGV[2]
redis.call('INCR', fk .. ':gen')
local keys = redis.call('ZRANGE', fk .. ':lru', 0, -1)
for _, key in ipairs(keys) do drop(key) end
return #keys
"""

# ARGV: P, request id (the one that produced the answer, or one it was served to)
INVALIDATE_REQUEST = _READER + """
local source = redis.call('GET', P .. ':served:' .. ARGV[2]) or ARGV[2]
local key = redis.call('HGET', P .. ':req', source)
if not key then return 0 end
return drop(key)
"""

# ARGV: P, now, at most this many. Returns how many expired entries were dropped.
SWEEP = _READER + """
local keys = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, key in ipairs(keys) do drop(key) end
return #keys
"""
