-- reclaim.lua: put a stale claim's lines back at the head of their model's pending list.
--
-- KEYS[1] claims hash, KEYS[2] pending list of the claim's model
-- ARGV[1] claim id
--
-- Returns the number of lines put back (0 when another caller reclaimed or closed it first).
-- Invariant: a claim is closed once, by its flusher (HDEL after the batch is recorded) or here.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local cids = cjson.decode(raw)['cids']
for i = #cids, 1, -1 do
  redis.call('LPUSH', KEYS[2], cids[i])
end
return #cids
