-- open_attempt.lua: a member's first attempt recorded as in flight only when the member will call:
-- its panel exists and is not decided, it has no call record, and this copy holds its lease. Sent
-- last in the member's start MULTI (workers/panel/admission.py), after the lease's SET NX and
-- the admission's scripts, so the record never stands for a call that is not made (a receipt
-- rendered meanwhile would show it as cut off in flight).
-- KEYS[1] the panel's attempts hash, KEYS[2] the panel hash, KEYS[3] its calls hash, KEYS[4] the
-- member's lease. ARGV[1] attempt id, ARGV[2] its in_flight record, ARGV[3] TTL s, ARGV[4] the
-- member, ARGV[5] this copy's lease token. Returns 1 when written.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], 'decided') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return 0 end
if redis.call('GET', KEYS[4]) ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
