-- vote.lua: record one member's vote and decide the panel at most once.
--
-- KEYS[1] panel hash: n (members in all), quorum, dispatched (members sent so far), decided, answer
-- KEYS[2] votes hash: member id -> answer key ('' = the member gave no usable answer)
-- KEYS[3] tally hash: answer key -> votes
-- ARGV[1] member id
-- ARGV[2] answer key ('' for none)
-- ARGV[3] stage step: how many more members a staged panel sends when the sent ones disagree
--
-- Returns {status, leading answer, duplicate (0|1), outcome-or-from, to, distinct}:
--   'quorum'    this call reached the quorum and won the decision (answer = the winner)
--   'exhausted' every member voted, no quorum: this call won the decision and owes one arbiter
--   'next'      staged: every sent member voted without quorum; this call owes members from..to-1
--   'pending'   wait for more votes
--   'decided'   already decided (4th item = the outcome): a late or redelivered vote
-- `distinct` (for 'exhausted' and 'decided'): how many distinct usable answers were voted, so
-- the caller knows without another read whether there is anything for an arbiter to settle.
-- Invariants: a member's vote counts once (HSETNX); `decided` is written once, by the single
-- call that returns 'quorum' or 'exhausted'; 'next' is returned once per stage.
local member, answer, step = ARGV[1], ARGV[2], tonumber(ARGV[3])
local dup = 0
if redis.call('HSETNX', KEYS[2], member, answer) == 0 then
  dup = 1
elseif answer ~= '' then
  redis.call('HINCRBY', KEYS[3], answer, 1)
end

local decided = redis.call('HGET', KEYS[1], 'decided')
if decided then
  return {'decided', redis.call('HGET', KEYS[1], 'answer') or '', dup, decided, 0, redis.call('HLEN', KEYS[3])}
end

local quorum = tonumber(redis.call('HGET', KEYS[1], 'quorum'))
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local dispatched = tonumber(redis.call('HGET', KEYS[1], 'dispatched'))

-- the leader; ties broken by the smaller key so every caller sees the same leader
local tally = redis.call('HGETALL', KEYS[3])
local best, bestc = '', 0
for i = 1, #tally, 2 do
  local c = tonumber(tally[i + 1])
  if c > bestc or (c == bestc and tally[i] < best) then best, bestc = tally[i], c end
end

if bestc >= quorum then
  redis.call('HSET', KEYS[1], 'decided', 'quorum', 'answer', best)
  return {'quorum', best, dup}
end

local voted = redis.call('HLEN', KEYS[2])
if voted < dispatched then
  return {'pending', best, dup}
end
if dispatched < n then
  local upto = math.min(n, dispatched + math.max(step, 1))
  redis.call('HSET', KEYS[1], 'dispatched', upto)
  return {'next', best, dup, dispatched, upto}
end
redis.call('HSET', KEYS[1], 'decided', 'exhausted', 'answer', best)
return {'exhausted', best, dup, '', 0, #tally / 2}
