-- floor_admit.lua: the floor's admission before a member's call, in one round trip: a circuit
-- breaker's open flag, a per-minute request counter and token counter per model, and a daily
-- budget counter, each with a cap (bench/floor_task.py).
--
-- KEYS[1] breaker flag for the model (exists = open)
-- KEYS[2] requests this minute for the model (counter)
-- KEYS[3] tokens this minute for the model (counter)
-- KEYS[4] budget spent today (counter)
-- ARGV[1] tokens asked, ARGV[2] request cap, ARGV[3] token cap, ARGV[4] budget cap,
-- ARGV[5] cost of the call in budget units
--
-- Returns 'ok', or the name of what refused: 'breaker' | 'rate' | 'budget'.
-- Invariant: a refused call leaves every counter as it found it; a counter never outlives its
-- window (a minute's: 120 s, the day's: two days).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'breaker'
end
local tokens = tonumber(ARGV[1])
local req = redis.call('INCR', KEYS[2])
local tok = redis.call('INCRBY', KEYS[3], tokens)
if req == 1 then redis.call('EXPIRE', KEYS[2], 120) end
if tok == tokens then redis.call('EXPIRE', KEYS[3], 120) end
if req > tonumber(ARGV[2]) or tok > tonumber(ARGV[3]) then
  redis.call('DECR', KEYS[2])
  redis.call('DECRBY', KEYS[3], tokens)
  return 'rate'
end
local cost = tonumber(ARGV[5])
local spent = redis.call('INCRBY', KEYS[4], cost)
if spent == cost then redis.call('EXPIRE', KEYS[4], 172800) end
if spent > tonumber(ARGV[4]) then
  redis.call('DECRBY', KEYS[4], cost)
  redis.call('DECR', KEYS[2])
  redis.call('DECRBY', KEYS[3], tokens)
  return 'budget'
end
return 'ok'
