"""The shared state's operations as Lua scripts: each runs atomically in Redis, so a key's limit holds across replicas.

Layout under the prefix P (a new layout takes a new prefix):
  P:rate:<key id>:requests, P:rate:<key id>:tokens   hash: level, stamp, cap (a token bucket; absent = full)
  P:spend:<column>:<value>:<period start>            hash: booked (settled here by every replica), floor (the
                                                     largest ledger read any replica reported)
  ...:res (zset: reservation id -> expiry), ...:resv (hash: reservation id -> USD)
Time is Redis's own (`TIME`), so replicas with skewed clocks share one bucket.
"""

from __future__ import annotations

PREFIX = "trs:v1"

_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function bucket(key, per_minute)
  local v = redis.call('HMGET', key, 'level', 'stamp', 'cap')
  local level, stamp = tonumber(v[1]), tonumber(v[2])
  if level == nil or tonumber(v[3]) ~= per_minute then level, stamp = per_minute, now end
  return math.min(per_minute, level + math.max(0, now - stamp) * per_minute / 60)
end
local function put(key, per_minute, level)
  redis.call('HSET', key, 'level', tostring(level), 'stamp', tostring(now), 'cap', per_minute)
  redis.call('EXPIRE', key, math.ceil((per_minute - level) * 60 / per_minute) + 1)  -- gone once full again
end
"""

# KEYS: requests bucket, tokens bucket. ARGV: requests per minute (0: none), tokens per minute (0: none).
# Returns {1} when admitted (one request taken), else {0, seconds to wait (a string), 'requests'|'tokens'}.
RATE_ADMIT = _BUCKET + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local requests
if rpm > 0 then
  requests = bucket(KEYS[1], rpm)
  if requests < 1 then return {0, tostring((1 - requests) * 60 / rpm), 'requests'} end
end
if tpm > 0 then
  local tokens = bucket(KEYS[2], tpm)
  if tokens < 1 then return {0, tostring((1 - tokens) * 60 / tpm), 'tokens'} end
end
if rpm > 0 then put(KEYS[1], rpm, requests - 1) end
return {1}
"""

# KEYS: tokens bucket. ARGV: tokens per minute, tokens used (the bucket may go below zero).
RATE_CHARGE = _BUCKET + """
local tpm = tonumber(ARGV[1])
put(KEYS[1], tpm, bucket(KEYS[1], tpm) - tonumber(ARGV[2]))
return 1
"""

# Per limit i, KEYS[3i-2..3i]: figure hash, reservations zset, reservations hash.
# ARGV: reservation id, USD to reserve, reservation ttl_s, expire-at (the period's end + a day), then per limit:
# its cap (USD), 1 if reaching it refuses, this replica's floor (its last ledger read). Reservations expire by
# Redis's own clock (`TIME`): a replica whose clock runs ahead must not drop the others' reservations early.
# Returns {admitted 0/1, spent of limit 1 (string), reached 0/1 of limit 1, spent of limit 2, ...}.
SPEND_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, usd, ttl, expire_at = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n = #KEYS / 3
local out, refuse = {1}, false
for i = 1, n do
  local fig, rz, rh = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local cap, blocks, floor = tonumber(ARGV[2 + 3 * i]), ARGV[3 + 3 * i] == '1', tonumber(ARGV[4 + 3 * i])
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', rz, '-inf', now)) do redis.call('HDEL', rh, old) end
  redis.call('ZREMRANGEBYSCORE', rz, '-inf', now)
  if floor > tonumber(redis.call('HGET', fig, 'floor') or '0') then redis.call('HSET', fig, 'floor', tostring(floor)) end
  local spent = math.max(tonumber(redis.call('HGET', fig, 'booked') or '0'), tonumber(redis.call('HGET', fig, 'floor') or '0'))
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', rh)) do reserved = reserved + tonumber(v) end
  local reached = spent + reserved >= cap
  if reached and blocks then refuse = true end
  out[#out + 1] = tostring(spent)
  out[#out + 1] = reached and 1 or 0
end
if refuse then out[1] = 0; return out end
for i = 1, n do
  local fig, rz, rh = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('HSET', rh, id, tostring(usd))
  redis.call('ZADD', rz, now + ttl, id)
  redis.call('EXPIREAT', fig, expire_at)
  redis.call('EXPIREAT', rz, expire_at)
  redis.call('EXPIREAT', rh, expire_at)
end
return out
"""

# KEYS as SPEND_ADMIT's. ARGV: reservation id, expire-at, then per limit the USD to book. The cost is booked only
# where the reservation was still held, so a settle replayed after an outage never books twice.
SPEND_SETTLE = """
for i = 1, #KEYS / 3 do
  local fig, rz, rh = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('ZREM', rz, ARGV[1])
  local usd = tonumber(ARGV[2 + i])
  if redis.call('HDEL', rh, ARGV[1]) == 1 and usd > 0 then
    redis.call('HINCRBYFLOAT', fig, 'booked', usd)
    redis.call('EXPIREAT', fig, ARGV[2])
  end
end
return 1
"""
