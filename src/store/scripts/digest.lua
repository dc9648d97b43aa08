-- geosync digest script: a digest of each metadata bucket, for
-- anti-entropy between regions.
--
-- KEYS  metadata buckets
--
-- Returns one hex SHA1 per bucket ('' when the bucket is empty or missing)
-- of its records' keys and stamps, in key order. Two regions whose bucket
-- digests match hold the same stamp for every key of that bucket, and so
-- (stamps being unique per write) the same state.
local out = {}
for i = 1, #KEYS do
  local flat = redis.call('HGETALL', KEYS[i])
  if #flat == 0 then
    out[i] = ''
  else
    local parts = {}
    local sorted = sorted_pairs(flat)
    for j = 1, #sorted, 2 do
      local key = sorted[j]
      parts[#parts + 1] = #key .. ':' .. key .. string.sub(sorted[j + 1], 1, STAMP_LEN)
    end
    out[i] = redis.sha1hex(table.concat(parts))
  end
end
return out
