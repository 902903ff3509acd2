-- decide.lua: decide a panel from outside the vote path (deadline sweep, arbiter verdict).
--
-- KEYS[1] panel hash, KEYS[2] tally hash
-- ARGV[1] outcome to write ('sweep' | 'arbiter' | 'failed')
-- ARGV[2] answer key to write; '' = the current plurality leader (the sweep's choice)
-- ARGV[3] '1' to overwrite an 'exhausted' decision (the arbiter settling what the vote left open)
-- Returns {won (0|1), outcome, answer}. Invariant: at most one decision per panel, except that
-- the arbiter's verdict replaces 'exhausted' exactly once.
local current = redis.call('HGET', KEYS[1], 'decided')
if current and not (ARGV[3] == '1' and current == 'exhausted') then
  return {0, current, redis.call('HGET', KEYS[1], 'answer') or ''}
end
local answer = ARGV[2]
if answer == '' then
  local tally = redis.call('HGETALL', KEYS[2])
  local bestc = 0
  for i = 1, #tally, 2 do
    local c = tonumber(tally[i + 1])
    if c > bestc or (c == bestc and tally[i] < answer) then answer, bestc = tally[i], c end
  end
end
redis.call('HSET', KEYS[1], 'decided', ARGV[1], 'answer', answer)
return {1, ARGV[1], answer}
