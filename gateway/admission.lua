-- admission.lua: one round trip per request: who is calling, may they call now, what is left
-- of their budget today.
--
-- One Redis (one key declared): the tenant's keys are derived here from the key's record.
--   KEYS[1]  the API key's record (hash: tenant, id, revoked_at), by sha256 of the key
--   ARGV[1]  how a tenant's keys start (keys.tenant_tag_open(): 'pf:{t:'); the tenant and '}:' follow
-- Redis Cluster (three keys declared, all in the tenant's slot `{t:<tenant>}`): the caller has read
-- the key's record (another slot) and passes the tenant's keys; a second round trip.
--   KEYS[1]  gw:tenant   KEYS[2]  gw:rate   KEYS[3]  budget:day:<today>   ARGV[1]  the tenant
-- Both:
-- ARGV[2]  today (YYYYMMDD, UTC): the day of the workers' per-tenant spend counter
-- ARGV[3]  default rate (requests/s)    ARGV[4]  default burst    ARGV[5]  default budget (USD, -1 none)
-- Returns {0, "unknown"} | {0, "revoked"} | {0, "rate", tenant, retry_after_ms}
--       | {1, tenant, spent_nano, cap_nano (-1: no cap)}
-- Invariant: over any window the tenant is granted at most burst + rate * window requests,
-- fleet-wide (every replica spends the one bucket, timed by Redis's clock, not the replicas').
local tenant, conf_key, bucket, spent_key
if #KEYS == 1 then
  local rec = redis.call('HMGET', KEYS[1], 'tenant', 'revoked_at')
  if not rec[1] then return {0, 'unknown'} end
  if rec[2] then return {0, 'revoked'} end
  tenant = rec[1]
  local tt = ARGV[1] .. tenant .. '}:'
  conf_key, bucket, spent_key = tt .. 'gw:tenant', tt .. 'gw:rate', tt .. 'budget:day:' .. ARGV[2]
else
  tenant = ARGV[1]
  conf_key, bucket, spent_key = KEYS[1], KEYS[2], KEYS[3]
end
local conf = redis.call('HMGET', conf_key, 'rate_per_s', 'rate_burst', 'budget_usd')
local rate = tonumber(conf[1] or ARGV[3])
local burst = tonumber(conf[2] or ARGV[4])
local budget = tonumber(conf[3] or ARGV[5])

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

local spent = tonumber(redis.call('GET', spent_key) or '0')
local cap = -1
if budget and budget >= 0 then cap = math.floor(budget * 1000000000) end
return {1, tenant, spent, cap}
