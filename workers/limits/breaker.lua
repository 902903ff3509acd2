-- breaker.lua: one circuit breaker per key (provider:model), shared by the whole fleet.
--
-- KEYS[1]  hash: gen (bumped on every open and close), opened (microseconds, absent = closed),
--          seq (lease counter), c:<bucket> / f:<bucket> calls and failures per time bucket
-- KEYS[2]  sorted set of half-open probe leases: member lease id, score lease expiry (us)
-- ARGV[1]  op: "allow" | "record" | "release" | "peek"
-- ARGV[2]  now in microseconds, or "" to read redis.call('TIME') (production always sends "")
-- ARGV[3..8] window_us, min_calls, failure_rate, open_us, probes, probe_lease_us
-- ARGV[9..11] (record only) the permit's gen, its lease ("" unless a probe), ok (1 or 0)
-- ARGV[9..10] (release only) the permit's gen and its lease
--
-- allow  -> {1, gen, lease}   a permit; lease ~= "" makes it a half-open probe
--        -> {0, retry_in_us}  open, or every probe slot is taken
-- record -> the state after it: "closed" | "open" | "half_open"
-- release -> 1 if a probe slot of the current generation was freed, else 0; the permit made no
--           call worth counting (the caller gave up before it), so no outcome is recorded
-- peek   -> {state, calls, failures, opened_at_us or "", retry_in_us, probes_in_flight}, read-only
--
-- States: closed; open for open_us after `opened`; half-open after that until a probe reports.
-- Invariant: at most `probes` unexpired leases exist at once, fleet-wide; only an outcome of the
-- current generation moves the state (a call permitted before the breaker opened, or a probe
-- of an earlier half-open spell, is ignored). A probe lease expires after probe_lease_us so a
-- worker that dies mid-probe cannot wedge the breaker half-open.

local BUCKETS = 10        -- the window slides in steps of window/10
local HOLD_US = 3600e6    -- an open breaker nobody asks about for an hour past open_us is forgotten

local function now_us()
  if ARGV[2] ~= '' then return tonumber(ARGV[2]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local now = now_us()
local op = ARGV[1]
local window_us, min_calls, rate = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local open_us, probes, lease_us = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local bucket_us = window_us / BUCKETS
local current = math.floor(now / bucket_us)

local s = redis.call('HMGET', KEYS[1], 'gen', 'opened')
local gen, opened = tonumber(s[1]) or 0, tonumber(s[2]) -- opened nil: closed

local function state()
  if not opened then return 'closed' end
  if now < opened + open_us then return 'open' end
  return 'half_open'
end

-- Calls and failures in the window; with prune, drops buckets that slid out of it.
local function window(prune)
  local calls, fails, stale = 0, 0, {}
  local flat = redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do
    local kind, id = string.match(flat[i], '^([cf]):(%-?%d+)$')
    if kind then
      if tonumber(id) > current - BUCKETS then
        if kind == 'c' then calls = calls + tonumber(flat[i + 1]) else fails = fails + tonumber(flat[i + 1]) end
      else
        stale[#stale + 1] = flat[i]
      end
    end
  end
  if prune and #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
  return calls, fails
end

-- Move to a new generation: drop the window and every lease; opened_at nil means closed.
local function transition(opened_at)
  local flat = redis.call('HKEYS', KEYS[1])
  for _, f in ipairs(flat) do
    if string.match(f, '^[cf]:') then redis.call('HDEL', KEYS[1], f) end
  end
  redis.call('DEL', KEYS[2])
  redis.call('HINCRBY', KEYS[1], 'gen', 1)
  if not opened_at then
    redis.call('HDEL', KEYS[1], 'opened')
    redis.call('PEXPIRE', KEYS[1], math.ceil(window_us / 1000) + 1000)
  else
    redis.call('HSET', KEYS[1], 'opened', string.format('%.17g', opened_at))
    redis.call('PEXPIRE', KEYS[1], math.ceil((open_us + HOLD_US) / 1000))
  end
end

local function probe_wait()
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return math.max(0, math.ceil(tonumber(first[2]) - now))
end

if op == 'allow' then
  local st = state()
  if st == 'closed' then return {1, gen, ''} end
  if st == 'open' then return {0, math.ceil(opened + open_us - now)} end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= probes then return {0, probe_wait()} end
  local lease = tostring(redis.call('HINCRBY', KEYS[1], 'seq', 1))
  redis.call('ZADD', KEYS[2], now + lease_us, lease)
  redis.call('PEXPIRE', KEYS[2], math.ceil(lease_us / 1000) + 1000)
  return {1, gen, lease}
end

if op == 'record' then
  local permit_gen, lease, ok = tonumber(ARGV[9]), ARGV[10], ARGV[11] == '1'
  local st = state()
  if permit_gen ~= gen then return st end
  if st == 'closed' and lease == '' then
    redis.call('HINCRBY', KEYS[1], 'c:' .. current, 1)
    if not ok then redis.call('HINCRBY', KEYS[1], 'f:' .. current, 1) end
    local calls, fails = window(true)
    if calls >= min_calls and fails >= rate * calls then
      transition(now)
      return 'open'
    end
    redis.call('PEXPIRE', KEYS[1], math.ceil(window_us / 1000) + 1000)
    return 'closed'
  end
  if st == 'half_open' and lease ~= '' then
    if ok then transition(nil) return 'closed' end
    transition(now)
    return 'open'
  end
  return st
end

if op == 'release' then
  local permit_gen, lease = tonumber(ARGV[9]), ARGV[10]
  -- a lease of an earlier generation is already gone: transition() dropped every lease
  if permit_gen ~= gen or lease == '' then return 0 end
  return redis.call('ZREM', KEYS[2], lease)
end

if op == 'peek' then
  local st = state()
  local calls, fails = window(false)
  local retry, in_flight = 0, 0
  if st == 'open' then retry = math.ceil(opened + open_us - now) end
  if st == 'half_open' then
    in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
    if in_flight >= probes then retry = probe_wait() end
  end
  return {st, calls, fails, opened and string.format('%.17g', opened) or '', retry, in_flight}
end

return redis.error_reply('breaker.lua: unknown op ' .. tostring(op))
