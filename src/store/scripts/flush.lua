-- geosync flush script: a stamped FLUSHDB. Deletes every key whose recorded
-- stamp is older than ARGV[1], drops their metadata, and raises the
-- database's flush floor to ARGV[1].
--
-- From a peer (ARGV[3] = 'peer') only the floor is raised here: no change
-- older than the flush applies any more, and the agent then deletes the
-- keys recorded older than it a few buckets at a time (flushslice.lua,
-- decision 018), so that a large database does not block Redis. Keys never
-- stamped (a client's write the agent has not stamped yet) stay: they are
-- stamped after the flush.
--
-- In the region where the FLUSHDB ran (ARGV[3] = 'local') Redis already
-- emptied the database, metadata included, so every record found here was
-- written after the FLUSHDB: a peer's change applied before the flush was
-- stamped (older than the flush: deleted, as every peer does), or this
-- node's stamp of a client's write made after the FLUSHDB (its stamp was
-- taken before the flush's, but the write came after the flush: the key
-- stays, its record goes, and the agent stamps it again, newer than the
-- flush). Keys without metadata are clients' writes made after the FLUSHDB
-- and stay.
--
-- KEYS[1]  the flush floor key
-- KEYS[2]  the apply marker key
-- ARGV[1]  the flush stamp
-- ARGV[2]  the metadata key prefix (buckets are prefix .. n)
-- ARGV[3]  'peer' or 'local'
-- ARGV[4]  (local) this node's id as the last 4 hex digits of its stamps
--
-- Returns { keys deleted (-1 when the floor was already newer), keys to stamp again }.
-- A local flush tried again with the same stamp (its reply was lost) hands
-- back every key of the database to be stamped again.
redis.call('INCR', KEYS[2])
local stamp, prefix, from_peer, me = ARGV[1], ARGV[2], ARGV[3] == 'peer', ARGV[4]
local floor = redis.call('GET', KEYS[1])
if floor and floor == stamp and not from_peer then
  -- This flush was recorded by an earlier try whose reply was lost: the
  -- records it dropped are gone, so every key is handed back to be
  -- stamped again (those unchanged since their stamp ship nothing).
  local cursor, keys = '0', {}
  repeat
    local r = redis.call('SCAN', cursor, 'COUNT', 1000)
    cursor = r[1]
    for _, key in ipairs(r[2]) do
      if string.sub(key, 1, 10) ~= '__geosync:' then keys[#keys + 1] = key end
    end
  until cursor == '0'
  return { 0, keys }
end
if floor and floor >= stamp then return { -1, {} } end
if from_peer then
  redis.call('SET', KEYS[1], stamp)
  return { 0, {} }
end
local deleted = 0
local restamp = {}
local cursor = '0'
local buckets = {}
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', prefix .. '*', 'COUNT', 1000)
  cursor = r[1]
  for _, key in ipairs(r[2]) do buckets[#buckets + 1] = key end
until cursor == '0'
-- metadata older than the flush goes; keys stamped after it stay
for _, bucket in ipairs(buckets) do
  local flat = redis.call('HGETALL', bucket)
  for i = 1, #flat, 2 do
    local rec = parse_record(flat[i + 1])
    if rec.stamp < stamp then
      redis.call('HDEL', bucket, flat[i])
      digest_moved(bucket, flat[i], rec.stamp, nil)
      if string.sub(rec.stamp, -4) == me then
        restamp[#restamp + 1] = flat[i]
      else
        deleted = deleted + redis.call('DEL', flat[i])
      end
    end
  end
end
redis.call('SET', KEYS[1], stamp)
return { deleted, restamp }
