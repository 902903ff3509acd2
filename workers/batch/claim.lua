-- claim.lua: take up to N pending lines of one model for one flush, atomically.
--
-- KEYS[1] pending list of the model (custom ids)
-- KEYS[2] claims hash: claim id -> JSON {model, at, cids}
-- ARGV[1] N, ARGV[2] claim id, ARGV[3] model, ARGV[4] now (epoch seconds)
--
-- Returns the claimed custom ids (empty when none are pending).
-- Invariant: a line is in the pending list or in exactly one claim, never both and never
-- neither, so two flushers never upload the same line and a flusher killed mid-upload leaves
-- its lines in a claim that `reclaim.lua` puts back once it is stale.
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then
  return ids
end
redis.call('LTRIM', KEYS[1], #ids, -1)
redis.call('HSET', KEYS[2], ARGV[2], cjson.encode({model = ARGV[3], at = tonumber(ARGV[4]), cids = ids}))
return ids
