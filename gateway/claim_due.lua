-- claim_due.lua: hand each due callback to exactly one replica for a lease.
--
-- KEYS[1]  zset: job id -> time (unix ms) its next delivery attempt is due
-- ARGV[1]  how many to claim    ARGV[2]  lease (ms): a claimed delivery not settled by then is due again
-- Returns the claimed job ids. Invariant: while a lease runs, no other replica claims the job
-- (its score is pushed past now in the same atomic step that reads it); a replica that dies
-- mid-delivery loses only its lease, never the callback.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
end
return due
