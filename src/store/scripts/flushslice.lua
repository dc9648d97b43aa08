-- geosync flush slice script: one step of a flush (decision 018). The
-- flush script raised the database's flush floor first, so no change
-- older than the flush applies any more; these steps then drop, a few
-- buckets at a time, every record older than the flush, so that Redis is
-- never blocked for long.
--
-- KEYS[1]  the apply marker key; written first, so the tailer recognises
--          the deletes this script replicates as geosync's own
-- KEYS[2..]  metadata buckets
-- ARGV[1]  the flush stamp
-- ARGV[2]  when the flush began here (Unix ms)
-- ARGV[3]  '' for a peer's flush; for a local one, this node's id as the
--          last 4 hex digits of its stamps
--
-- A peer's flush deletes every key whose record is older than it. A key
-- written here since the flush began is newer than the flush: it stays,
-- its old record goes, and the agent stamps the write (it is in the
-- stream). Such a key has been touched since (OBJECT IDLETIME no longer
-- than the flush's age; under an LFU policy, where Redis keeps no idle
-- time, every key is checked): its value is read, and it is deleted only
-- when still what its record describes.
--
-- After a local FLUSHDB every key the database holds was written after
-- it. A record older than the flush describes a key the FLUSHDB deleted,
-- or one written since: by a client, stamped by this node before the
-- flush was (its record goes, the key stays and is handed back to be
-- stamped again), or by a peer's change older than the flush applied
-- after the FLUSHDB (deleted, as every peer deletes it).
--
-- Returns { keys deleted, keys kept as written since, keys to stamp again }.
mcall('INCR', KEYS[1])
local stamp, began, me = ARGV[1], tonumber(ARGV[2]), ARGV[3] or ''
local age_s = math.floor((now_ms() - began) / 1000) + 2
-- after a local FLUSHDB every key is newer than it: each is read
if me ~= '' then age_s = 2147483647 end
local deleted, kept, restamp = 0, 0, {}

for i = 2, #KEYS do
  local bucket = KEYS[i]
  local flat = mcall('HGETALL', bucket)
  local dropped = false
  for j = 1, #flat, 2 do
    local key, rec = flat[j], parse_record(flat[j + 1])
    if rec.stamp < stamp then
      dropped = true
      if me ~= '' and string.sub(rec.stamp, -4) == me then
        mcall('HDEL', bucket, key)
        if ucall('EXISTS', key) == 1 then restamp[#restamp + 1] = key end
      else
        local what = drop_flushed(bucket, key, rec, age_s, true)
        if what == 'deleted' then
          deleted = deleted + 1
        elseif what == 'kept' then
          kept = kept + 1
        end
      end
    end
  end
  -- The digest once per bucket, from what is left (usually nothing).
  if dropped then digest_rebuild(bucket) end
end
return { deleted, kept, restamp }
