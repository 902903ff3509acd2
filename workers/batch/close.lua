-- close.lua: close one finished batch of a flush's group, once.
--
-- KEYS[1] open batches hash: batch id -> JSON, KEYS[2] the group's count of batches still open
-- ARGV[1] batch id
--
-- Returns how many of the group's batches are still open after this one, or nil when the batch
-- was closed before (by another poller that landed it too: a stale HGETALL, or a lock lost mid-poll).
-- Invariant: each batch counts its group down once, so the group is closed (its unanswered lines
-- failed) only when its last batch is, however many pollers land a batch.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return nil
end
return redis.call('DECR', KEYS[2])
