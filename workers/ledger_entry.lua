-- ledger_entry.lua: a job's ledger entry and its id in the job hash, in one step (queued in the
-- job's finalise MULTI on a single Redis, so the id no longer costs a round trip after it).
--
-- KEYS[1] the ledger stream, KEYS[2] the job hash
-- ARGV[1] max length (approximate), ARGV[2] task class, ARGV[3] the receipt (JSON),
-- ARGV[4] the entry this one replaces ('' for none: a job's first entry)
-- Returns the new entry's id.
-- Invariant: the ledger holds one entry per job, and the job's `ledger_id` names it.
if ARGV[4] ~= '' then redis.call('XDEL', KEYS[1], ARGV[4]) end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'task_class', ARGV[2], 'receipt', ARGV[3])
redis.call('HSET', KEYS[2], 'ledger_id', id)
return id
