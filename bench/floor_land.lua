-- floor_land.lua: the floor's landing after a member's call, in one round trip: record the call,
-- count its vote, and decide the panel the first time an answer has a quorum (bench/floor_task.py).
--
-- KEYS[1] the panel's calls hash: member -> "model|answer|latency ms|tokens"
-- KEYS[2] the panel's tally hash: answer -> votes
-- KEYS[3] the panel's decision hash (the receipt): answer, votes, member, at
-- ARGV[1] member, ARGV[2] model, ARGV[3] answer, ARGV[4] latency ms, ARGV[5] tokens,
-- ARGV[6] quorum, ARGV[7] seconds the panel's keys live, ARGV[8] now (seconds, the worker's clock)
--
-- Returns 'decided' (this call decided the panel), 'voted' (no quorum yet, or decided before) or
-- 'duplicate' (this member landed before: a redelivered message votes once).
-- Invariant: a member's vote counts once; the decision is written once, by the first call whose
-- answer reaches the quorum. The keys share the panel's hash tag, so this runs on a Redis Cluster.
local ttl = tonumber(ARGV[7])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5]) == 0 then
  return 'duplicate'
end
local votes = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
if votes >= tonumber(ARGV[6]) and redis.call('HSETNX', KEYS[3], 'answer', ARGV[3]) == 1 then
  redis.call('HSET', KEYS[3], 'votes', votes, 'member', ARGV[1], 'at', ARGV[8])
  redis.call('EXPIRE', KEYS[3], ttl)
  return 'decided'
end
return 'voted'
