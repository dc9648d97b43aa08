-- geosync forget script: drops keys a peer lacks below its collected floor
-- (decision 015). The peer dropped their tombstones or expired records
-- once every region had every change stamped before its floor, and turns
-- away any change older than it for a key it holds no record of: a record
-- older than that floor which the peer lacks (the key was lost there
-- without a trace, or this region came back from an older copy of its
-- data) would differ for ever. Every region settles on the peer's side:
-- the key is deleted.
--
-- KEYS[1]  the apply marker key; written first, so the tailer recognises
--          the deletes this script replicates as geosync's own
-- KEYS[2i], KEYS[2i+1]  a key and its metadata bucket
-- ARGV[1]  the peer's collected floor
-- ARGV[i+1]  the stamp the agent read for the i-th key
--
-- A key is dropped (value, record, its share of the bucket digest) only
-- when its record still holds that stamp, older than the floor, and its
-- value is what the record describes: a local write the stamper has not
-- reached yet is kept, and ships with a newer stamp. A collection too large
-- to read here is kept. Raises the database's collected floor to the
-- peer's when anything was dropped, so that no change older than it
-- brings a dropped key back.
--
-- Returns the number of keys dropped: values deleted. A tombstone (or the
-- record of a value already gone) dropped with them is collection, not a
-- key taken away, and is not counted; it still raises the floor.
local floor = ARGV[1]
local dropped = 0
local forgotten = 0
local marked = false
for i = 2, #KEYS, 2 do
  local key, bucket = KEYS[i], KEYS[i + 1]
  local expected = ARGV[i / 2 + 1]
  local rec = parse_record(mcall('HGET', bucket, key))
  if rec ~= nil and rec.stamp == expected and rec.stamp < floor then
    local state = read_state(key)
    local unchanged
    if state == nil then
      -- a tombstone, an expired value, or a delete not yet stamped (the
      -- stamper finds it without a record: it stays deleted)
      unchanged = true
    elseif rec.flag == 't' or state.unsupported then
      unchanged = false
    else
      unchanged = digest(state) == rec.digest
    end
    if unchanged then
      if not marked then
        mcall('INCR', KEYS[1])
        marked = true
      end
      if state ~= nil then
        ucall('UNLINK', key)
        dropped = dropped + 1
      end
      mcall('HDEL', bucket, key)
      digest_moved(bucket, key, rec.stamp, nil)
      forgotten = forgotten + 1
    end
  end
end
if forgotten > 0 then
  local mine = mcall('GET', COLLECTED)
  if not mine or mine < floor then
    mcall('SET', COLLECTED, floor)
  end
end
return dropped
