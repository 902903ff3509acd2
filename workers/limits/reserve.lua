-- reserve.lua: fleet-wide requests/min and tokens/min per key, GCRA on Redis server time.
--
-- KEYS[i]  one hash per limit key, fields r (request TAT), t (token TAT), p (paused until);
--          all times are microseconds on the Redis clock
-- ARGV[1]  op: "acquire" | "reconcile" | "pause" | "peek"
-- ARGV[2]  now in microseconds, or "" to read redis.call('TIME'). Production always sends "";
--          tests inject a value to exercise clock edges.
--
-- acquire    ARGV[3] tokens; ARGV[2+2i], ARGV[3+2i] rpm and tpm of KEYS[i]
--            -> {1, 0, 0, t_1, ..., t_n}  granted; t_i = token TAT of KEYS[i] after the grant
--            -> {0, i, wait_us}           not granted: KEYS[i] is the longest wait; nothing written
--            -> {-1, i, 0}                never grantable: tokens exceed KEYS[i]'s tpm
-- reconcile  ARGV[3] actual - reserved tokens; ARGV[2+2i], ARGV[3+2i] tpm of KEYS[i] and its t_i
--            from the grant -> {1}
-- pause      ARGV[3] microseconds -> paused-until (string), the later of the old and the new one
-- peek       ARGV[3] rpm, ARGV[4] tpm -> {requests, tokens, paused_until} as strings, read-only
--
-- Invariant (GCRA, burst tolerance one minute): for each key and each dimension with limit L,
-- the units granted in any interval of w microseconds never exceed L + L*w/60e6; a grant takes
-- every key or none. Refunds give back only the part of a reservation still ahead of the clock
-- (capacity that has not come back by itself), so they cannot break the bound; charges above a
-- reservation were already spent upstream and push the key into debt instead.

local MINUTE = 60000000
local EPS = 1 -- microseconds of float slack on the grant test (TATs near 1.7e15 us are doubles)

local function now_us()
  if ARGV[2] ~= '' then return tonumber(ARGV[2]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(v, default)
  return tonumber(v) or default
end

local function fmt(x)
  return string.format('%.17g', x) -- round-trips a double exactly
end

-- An idle key is identical to an absent one once every TAT has passed, so it may expire then.
local function expire(key, now, r, t, p)
  local last = math.max(r, t, p)
  redis.call('PEXPIRE', key, math.max(1, math.ceil((last - now) / 1000) + 1000))
end

local op = ARGV[1]
local now = now_us()

if op == 'acquire' then
  local tokens = tonumber(ARGV[3])
  local wait, blocker = 0, 0
  local rs, ts, ps = {}, {}, {}
  for i = 1, #KEYS do
    local rpm, tpm = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
    local cost = tokens * MINUTE / tpm
    if cost > MINUTE + EPS then return {-1, i, 0} end
    local s = redis.call('HMGET', KEYS[i], 'r', 't', 'p')
    local r = math.max(num(s[1], 0), now) + MINUTE / rpm
    local t = math.max(num(s[2], 0), now) + cost
    local p = num(s[3], 0)
    -- how long until this key would grant: both buckets have room and the pause is over
    local w = math.max(r - now - MINUTE, t - now - MINUTE, p - now)
    if w > EPS and w > wait then wait, blocker = w, i end
    rs[i], ts[i], ps[i] = r, t, p
  end
  if blocker > 0 then return {0, blocker, math.ceil(wait)} end
  local out = {1, 0, 0}
  for i = 1, #KEYS do
    redis.call('HSET', KEYS[i], 'r', fmt(rs[i]), 't', fmt(ts[i]))
    expire(KEYS[i], now, rs[i], ts[i], ps[i])
    out[3 + i] = fmt(ts[i])
  end
  return out
end

if op == 'reconcile' then
  local delta = tonumber(ARGV[3])
  for i = 1, #KEYS do
    local tpm, granted_tat = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
    local s = redis.call('HMGET', KEYS[i], 'r', 't', 'p')
    local r, t, p = num(s[1], now), num(s[2], now), num(s[3], 0)
    if delta > 0 then
      t = math.max(t, now) + delta * MINUTE / tpm
    else
      -- only the slice of the reservation still in the future is unspent capacity
      local credit = math.min(-delta * MINUTE / tpm, math.max(0, granted_tat - now))
      t = math.max(t - credit, now)
    end
    if delta > 0 or s[2] then
      redis.call('HSET', KEYS[i], 't', fmt(t))
      expire(KEYS[i], now, r, t, p)
    end
  end
  return {1}
end

if op == 'pause' then
  local s = redis.call('HMGET', KEYS[1], 'r', 't', 'p')
  local p = math.max(num(s[3], 0), now + tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'p', fmt(p))
  expire(KEYS[1], now, num(s[1], now), num(s[2], now), p)
  return fmt(p)
end

if op == 'peek' then
  local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
  local s = redis.call('HMGET', KEYS[1], 'r', 't', 'p')
  local r, t = math.max(num(s[1], now), now), math.max(num(s[2], now), now)
  local requests = math.max(0, (now + MINUTE - r) * rpm / MINUTE)
  local tokens = math.max(0, (now + MINUTE - t) * tpm / MINUTE)
  local p = num(s[3], 0)
  if p <= now then p = 0 end
  return {fmt(requests), fmt(tokens), fmt(p)}
end

return redis.error_reply('reserve.lua: unknown op ' .. tostring(op))
