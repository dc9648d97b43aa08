-- geosync collect script: drops the tombstones every region has
-- (decision 015). A tombstone keeps an older change from bringing its key
-- back; once every change stamped up to the mesh's stable frontier has
-- reached every region, no change older than it can arrive any more, and
-- the database's collected floor (COLLECTED) turns such a change away for
-- any key without a record, as the flush floor does.
--
-- KEYS     metadata buckets
-- ARGV[1]  the frontier: every region has every change stamped up to it
--
-- Drops, from each bucket, tombstones stamped before the frontier, and
-- records of values whose expiry has passed, stamped before it, whose key
-- is gone (Redis expired it; every region expires it at the same time).
-- Raises the collected floor to the frontier first.
--
-- Returns { records dropped, tombstones kept, records kept }.
local frontier = ARGV[1]
local floor = mcall('GET', COLLECTED)
if not floor or floor < frontier then
  mcall('SET', COLLECTED, frontier)
end
local now = now_ms()
-- Records older than the last flush are what a peer's flush left for its
-- slices when the agent stopped halfway (decision 018): finished here.
local flushed = mcall('GET', FLOOR)
local dropped, kept, records = 0, 0, 0
for _, bucket in ipairs(KEYS) do
  local flat = mcall('HGETALL', bucket)
  for i = 1, #flat, 2 do
    local key, rec = flat[i], parse_record(flat[i + 1])
    local gone = rec.flag == 't'
        or (rec.expiry and rec.expiry <= now and ucall('EXISTS', key) == 0)
    if flushed and rec.stamp < flushed then
      drop_flushed(bucket, key, rec, 2)
      dropped = dropped + 1
    elseif gone and rec.stamp < frontier then
      mcall('HDEL', bucket, key)
      digest_moved(bucket, key, rec.stamp, nil)
      dropped = dropped + 1
    else
      records = records + 1
      if rec.flag == 't' then
        kept = kept + 1
      end
    end
  end
end
return { dropped, kept, records }
