-- budget.lua: reserve spend against several caps at once, all or nothing.
--
-- KEYS[i]  a spend counter (integer nano-USD): per job, per tenant and day
-- ARGV[1]  amount to add (nano-USD; negative to refund or settle down)
-- ARGV[1+i] cap for KEYS[i] (nano-USD; -1 = no cap)
-- ARGV[2+#KEYS] TTL in seconds for a counter this creates; an existing counter keeps its own (a job's
--          is cut to the result TTL when it is finalised, and a late member's settle must not extend it)
-- Returns {1, 0} when granted, {0, i} when KEYS[i] would pass its cap (nothing is added).
-- Invariant: with only non-negative amounts, no counter ever exceeds its cap, whatever the
-- concurrency (the check and the add are one atomic step).
local amount = tonumber(ARGV[1])
if amount > 0 then
  for i = 1, #KEYS do
    local cap = tonumber(ARGV[1 + i])
    if cap >= 0 and tonumber(redis.call('GET', KEYS[i]) or '0') + amount > cap then
      return {0, i}
    end
  end
end
local ttl = tonumber(ARGV[2 + #KEYS])
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], amount)
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return {1, 0}
