-- admission.lua: one round trip per request: who is calling, may they call now, what is left
-- of their budget today.
--
-- KEYS[1]  the API key's record (hash: tenant, id, revoked_at), by sha256 of the key
-- ARGV[1]  key prefix (e.g. "pf:")
-- ARGV[2]  today (YYYYMMDD, UTC): the day of the workers' per-tenant spend counter
-- ARGV[3]  default rate (requests/s)    ARGV[4]  default burst    ARGV[5]  default budget (USD, -1 none)
-- Returns {0, "unknown"} | {0, "revoked"} | {0, "rate", tenant, retry_after_ms}
--       | {1, tenant, spent_nano, cap_nano (-1: no cap)}
-- Invariant: over any window the tenant is granted at most burst + rate * window requests,
-- fleet-wide (every replica spends the one bucket, timed by Redis's clock, not the replicas').
-- Not Redis Cluster-safe: the tenant's keys are derived here, not declared.
local rec = redis.call('HMGET', KEYS[1], 'tenant', 'revoked_at')
if not rec[1] then return {0, 'unknown'} end
if rec[2] then return {0, 'revoked'} end
local tenant = rec[1]
local p = ARGV[1]
local conf = redis.call('HMGET', p .. 'gw:tenant:' .. tenant, 'rate_per_s', 'rate_burst', 'budget_usd')
local rate = tonumber(conf[1] or ARGV[3])
local burst = tonumber(conf[2] or ARGV[4])
local budget = tonumber(conf[3] or ARGV[5])

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = p .. 'gw:rate:' .. tenant
local b = redis.call('HMGET', bucket, 'tokens', 'at')
local tokens = tonumber(b[1] or burst)
local at = tonumber(b[2] or now_ms)
tokens = math.min(burst, tokens + math.max(0, now_ms - at) * rate / 1000)
if tokens < 1 then
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', now_ms)
  redis.call('PEXPIRE', bucket, math.ceil(burst / rate * 1000) + 1000)
  return {0, 'rate', tenant, math.ceil((1 - tokens) * 1000 / rate)}
end
redis.call('HSET', bucket, 'tokens', tostring(tokens - 1), 'at', now_ms)
redis.call('PEXPIRE', bucket, math.ceil(burst / rate * 1000) + 1000)

local spent = tonumber(redis.call('GET', p .. 'budget:tenant:' .. tenant .. ':' .. ARGV[2]) or '0')
local cap = -1
if budget and budget >= 0 then cap = math.floor(budget * 1000000000) end
return {1, tenant, spent, cap}
