-- geosync flush slice script: one step of a peer's flush (decision 018).
-- The flush script raised the database's flush floor first, so no change
-- older than the flush applies any more; these steps then delete, a few
-- buckets at a time, every key whose record is older than the flush, so
-- that Redis is never blocked for long.
--
-- KEYS[1]  the apply marker key; written first, so the tailer recognises
--          the deletes this script replicates as geosync's own
-- KEYS[2..]  metadata buckets
-- ARGV[1]  the flush stamp
-- ARGV[2]  when the flush began here (Unix ms)
--
-- A key written here since the flush began is newer than the flush: it
-- stays, its old record goes, and the agent stamps the write (it is in the
-- stream). Such a key has been touched since (OBJECT IDLETIME no longer
-- than the flush's age; under an LFU policy, where Redis keeps no idle
-- time, every key is checked): its value is read, and it is deleted only
-- when still what its record describes.
--
-- Returns { keys deleted, keys kept as written since }.
redis.call('INCR', KEYS[1])
local stamp, began = ARGV[1], tonumber(ARGV[2])
local age_s = math.floor((now_ms() - began) / 1000) + 2
local deleted, kept = 0, 0

for i = 2, #KEYS do
  local bucket = KEYS[i]
  local flat = redis.call('HGETALL', bucket)
  local dropped = false
  for j = 1, #flat, 2 do
    local rec = parse_record(flat[j + 1])
    if rec.stamp < stamp then
      local what = drop_flushed(bucket, flat[j], rec, age_s, true)
      dropped = true
      if what == 'deleted' then
        deleted = deleted + 1
      elseif what == 'kept' then
        kept = kept + 1
      end
    end
  end
  -- The digest once per bucket, from what is left (usually nothing).
  if dropped then digest_rebuild(bucket) end
end
return { deleted, kept }
