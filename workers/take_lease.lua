-- take_lease.lua: take a panel's conclusion lease, or leave a re-render request for its holder.
--
-- KEYS[1] the lease (string, expires), KEYS[2] the panel hash
-- ARGV[1] the taker (pid, for operators), ARGV[2] lease seconds
-- Returns {1, concluded (0|1)} when taken (concluded: the panel's `once:concluded` is set, so the
-- taker only re-renders), else {0, 0} (and `rerender` is set on the panel hash).
-- Invariant: one holder at a time; a caller that finds the lease taken is never lost, because
-- the holder serves its `rerender` request before it lets go (release_lease.lua).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return {1, redis.call('HEXISTS', KEYS[2], 'once:concluded')}
end
redis.call('HSET', KEYS[2], 'rerender', 1)
return {0, 0}
