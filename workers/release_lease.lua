-- release_lease.lua: let a panel's conclusion lease go unless a re-render was requested meanwhile.
--
-- KEYS[1] the lease, KEYS[2] the panel hash
-- ARGV[1] when not '': the time the panel was concluded, written as `once:concluded` first
-- Returns 1 when a re-render was requested (the request is cleared and the lease kept: the
-- holder re-renders, then calls this again), else 0 (the lease is deleted).
-- Invariant: a re-render request made while the lease is held is served before the lease goes;
-- `once:concluded` is written only by the holder, after its conclusion's action.
if ARGV[1] ~= '' then redis.call('HSET', KEYS[2], 'once:concluded', ARGV[1]) end
if redis.call('HDEL', KEYS[2], 'rerender') == 1 then return 1 end
redis.call('DEL', KEYS[1])
return 0
