-- reserve.lua: fleet-wide requests/min and tokens/min per key, GCRA on Redis server time.
--
-- KEYS[i]  one hash per limit key: b (base, integer microseconds on the Redis clock) and, as
--          offsets from b, r (request TAT), t (token TAT), p (paused until); k (the key's
--          incarnation: the microsecond it was created) and c (token credit refunded since, us)
-- ARGV[1]  op: "acquire" | "reconcile" | "release" | "pause" | "peek"
-- ARGV[2]  now in integer microseconds, or "" to read redis.call('TIME'). Production always
--          sends ""; tests inject a value to exercise clock edges.
--
-- acquire    ARGV[3] tokens; ARGV[1+3i], ARGV[2+3i], ARGV[3+3i] rpm, tpm and burst (us) of KEYS[i]
--            -> {1, now, 0, t_1, ..., t_n, k_1, c_1, ..., k_n, c_n, r_1, ..., r_n}  granted at `now`;
--               t_i (r_i) = KEYS[i]'s token (request) TAT - now, k_i and c_i its incarnation and
--               credit so far
--            -> {0, i, wait_us}             not granted: KEYS[i] waits longest; nothing written
--            -> {-1, i, 0}                  never grantable: tokens exceed KEYS[i]'s tpm
-- reconcile  ARGV[3] actual - reserved tokens; ARGV[4] the grant's now;
--            ARGV[1+4i] .. ARGV[4+4i]: tpm of KEYS[i], and its t_i, k_i, c_i from the grant -> {1}
-- release    a grant whose call was never made, given back: ARGV[3] its tokens; ARGV[4] the grant's
--            now; ARGV[5+6(i-1)] .. ARGV[10+6(i-1)]: rpm and tpm of KEYS[i], and its r_i, t_i, k_i,
--            c_i from the grant -> {1}. The tokens go back as reconcile's refund does; the request
--            only while no later grant has moved the key's request schedule (else it stays taken:
--            capacity idles, never exceeds)
-- pause      ARGV[3] microseconds -> paused-until (string), the later of the old and the new one
-- peek       ARGV[3] rpm, ARGV[4] tpm, ARGV[5] burst (us) -> {requests, tokens, paused_until}
--            as strings, read-only
--
-- Invariant (GCRA, burst tolerance B microseconds, at most one minute): for each key and each
-- dimension with limit L, the units granted in any interval of w microseconds never exceed
-- L*(B + w)/60e6, except that one unit (one request, or one request's tokens) larger than the
-- burst is granted alone on an empty schedule; a grant takes every key or none. Refunds give
-- back only the part of a reservation still ahead of the clock (capacity that has not come back
-- by itself), so they cannot break the bound: a reservation's slice of the schedule is where its
-- grant put it, moved earlier by every refund since (c grows by each; counted whole, though a
-- refund of a later grant moves nothing before it: an under-refund idles capacity, never exceeds
-- it), and a key that expired and came back (another k) refunds nothing to an older grant.
-- Charges above a reservation were already spent upstream and push the key into debt instead.
--
-- Times are kept as offsets from the last write's now: absolute microseconds (~1.7e15) have only
-- quarter-microsecond resolution as doubles, and the error would add up over a burst.

local MINUTE = 60000000
local EPS = 1e-3 -- microseconds of float slack on the grant test (60e6/L is rarely exact)

local function now_us()
  if ARGV[2] ~= '' then return tonumber(ARGV[2]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function fmt(x)
  return string.format('%.17g', x) -- round-trips a double exactly
end

local op = ARGV[1]
local now = now_us()

-- r, t, p of a key relative to now (absent fields: nothing scheduled, nothing paused).
-- k and c: the key's incarnation (now, when it is new) and the credit refunded in it so far.
local function load(key)
  local s = redis.call('HMGET', key, 'b', 'r', 't', 'p', 'k', 'c')
  if not s[1] then return 0, 0, 0, false, string.format('%.0f', now), 0 end
  local shift = tonumber(s[1]) - now -- both integers: exact
  return shift + tonumber(s[2]), shift + tonumber(s[3]), shift + tonumber(s[4]), true, s[5] or '0',
    tonumber(s[6] or '0')
end

-- Rebase on now and let an idle key expire once its last TAT has passed: it is then identical
-- to an absent one.
local function store(key, r, t, p, k, c)
  redis.call('HSET', key, 'b', string.format('%.0f', now), 'r', fmt(r), 't', fmt(t), 'p', fmt(p), 'k', k, 'c', fmt(c))
  redis.call('PEXPIRE', key, math.max(1, math.ceil(math.max(r, t, p) / 1000) + 1000))
end

if op == 'acquire' then
  local tokens = tonumber(ARGV[3])
  local wait, blocker = 0, 0
  local rs, ts, ps, ks, cs = {}, {}, {}, {}, {}
  for i = 1, #KEYS do
    local rpm, tpm, burst = tonumber(ARGV[1 + 3 * i]), tonumber(ARGV[2 + 3 * i]), tonumber(ARGV[3 + 3 * i])
    local interval, cost = MINUTE / rpm, tokens * MINUTE / tpm
    if cost > MINUTE + EPS then return {-1, i, 0} end
    local r, t, p, _, k, c = load(KEYS[i])
    ks[i], cs[i] = k, c
    r, t = math.max(r, 0) + interval, math.max(t, 0) + cost
    -- how long until this key would grant: both buckets have room and the pause is over; a
    -- unit larger than the burst fits an empty schedule, else it could never pass
    local w = math.max(r - math.max(burst, interval), t - math.max(burst, cost), p)
    if w > EPS and w > wait then wait, blocker = w, i end
    rs[i], ts[i], ps[i] = r, t, p
  end
  if blocker > 0 then return {0, blocker, math.ceil(wait)} end
  local out = {1, string.format('%.0f', now), 0}
  local n = #KEYS
  for i = 1, n do
    store(KEYS[i], rs[i], ts[i], ps[i], ks[i], cs[i])
    out[3 + i] = fmt(ts[i])
    out[2 + n + 2 * i] = ks[i]
    out[3 + n + 2 * i] = fmt(cs[i])
    out[3 + 3 * n + i] = fmt(rs[i])
  end
  return out
end

if op == 'reconcile' then
  local delta, granted_at = tonumber(ARGV[3]), tonumber(ARGV[4])
  for i = 1, #KEYS do
    local tpm, granted_t = tonumber(ARGV[1 + 4 * i]), tonumber(ARGV[2 + 4 * i])
    local granted_k, granted_c = ARGV[3 + 4 * i], tonumber(ARGV[4 + 4 * i])
    local r, t, p, exists, k, c = load(KEYS[i])
    if delta > 0 then
      store(KEYS[i], r, math.max(t, 0) + delta * MINUTE / tpm, p, k, c)
    elseif exists and k == granted_k then
      -- only the slice of the reservation still in the future is unspent capacity; every refund
      -- since the grant has moved that slice earlier by its credit
      local ahead = (granted_at - now) + granted_t - math.max(0, c - granted_c)
      local credit = math.min(-delta * MINUTE / tpm, math.max(0, ahead), math.max(t, 0))
      store(KEYS[i], r, t - credit, p, k, c + credit)
    end
  end
  return {1}
end

if op == 'release' then
  local tokens, granted_at = tonumber(ARGV[3]), tonumber(ARGV[4])
  for i = 1, #KEYS do
    local a = 4 + 6 * (i - 1)
    local rpm, tpm, granted_r, granted_t = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
      tonumber(ARGV[a + 4])
    local granted_k, granted_c = ARGV[a + 5], tonumber(ARGV[a + 6])
    local r, t, p, exists, k, c = load(KEYS[i])
    if exists and k == granted_k then
      local ahead = (granted_at - now) + granted_t - math.max(0, c - granted_c)
      local credit = math.min(tokens * MINUTE / tpm, math.max(0, ahead), math.max(t, 0))
      -- the request schedule still ends at this grant's request (to float slack, far under the
      -- whole interval a later grant moves it by): take that request off it
      local interval = MINUTE / rpm
      if math.abs(r - ((granted_at - now) + granted_r)) < math.min(1, interval / 2) then r = r - interval end
      store(KEYS[i], r, t - credit, p, k, c + credit)
    end
  end
  return {1}
end

if op == 'pause' then
  local r, t, p, _, k, c = load(KEYS[1])
  p = math.max(p, tonumber(ARGV[3]))
  store(KEYS[1], r, t, p, k, c)
  return fmt(now + p)
end

if op == 'peek' then
  local rpm, tpm, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local r, t, p = load(KEYS[1])
  local requests = math.max(0, (burst - math.max(r, 0)) * rpm / MINUTE)
  local tokens = math.max(0, (burst - math.max(t, 0)) * tpm / MINUTE)
  if p <= 0 then p = 0 else p = now + p end
  return {fmt(requests), fmt(tokens), fmt(p)}
end

return redis.error_reply('reserve.lua: unknown op ' .. tostring(op))
