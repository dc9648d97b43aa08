-- geosync flush script: a stamped FLUSHDB. Raises the database's flush
-- floor to ARGV[1]: no change older than the flush applies any more, and
-- a record older than it describes nothing (the stamp script takes it for
-- no record). The agent then drops the records older than the flush, and
-- the keys they describe where the flush says so, a few buckets at a time
-- (flushslice.lua, decision 018), so that a large database does not block
-- Redis.
--
-- From a peer (ARGV[3] = 'peer') the slices delete the keys recorded
-- older than the flush. Keys never stamped (a client's write the agent has
-- not stamped yet) stay: they are stamped after the flush.
--
-- In the region where the FLUSHDB ran (ARGV[3] = 'local') Redis already
-- emptied the database, but not its metadata, which lives in the metadata
-- database (decision 020): the slices sort the records out (see
-- flushslice.lua).
--
-- KEYS[1]  the flush floor key
-- KEYS[2]  the apply marker key
-- ARGV[1]  the flush stamp
-- ARGV[2]  unused (the metadata key prefix, before decision 020)
-- ARGV[3]  'peer' or 'local'
--
-- Returns { 0 (-1 when the floor was already newer), keys to stamp again }.
-- A local flush tried again with the same stamp (its reply, or one of its
-- slices' replies, was lost) hands back every key of the database to be
-- stamped again: the records its slices dropped are gone.
mcall('INCR', KEYS[2])
local stamp, from_peer = ARGV[1], ARGV[3] == 'peer'
local floor = mcall('GET', KEYS[1])
if floor and floor == stamp and not from_peer then
  local cursor, keys = '0', {}
  repeat
    local r = ucall('SCAN', cursor, 'COUNT', 1000)
    cursor = r[1]
    for _, key in ipairs(r[2]) do
      if string.sub(key, 1, 10) ~= '__geosync:' then keys[#keys + 1] = key end
    end
  until cursor == '0'
  return { 0, keys }
end
if floor and floor >= stamp then return { -1, {} } end
mcall('SET', KEYS[1], stamp)
return { 0, {} }
