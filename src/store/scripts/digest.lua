-- geosync digest script: the digest of each metadata bucket, for
-- anti-entropy between regions (decision 013).
--
-- KEYS     metadata buckets
-- ARGV[1]  'stored' to read the digests the scripts keep, 'rebuild' to
--          compute them from the records first (at start, and for buckets
--          a repair found equal although their digests differed)
--
-- Returns one digest per bucket ('' when the bucket is empty): the sum
-- of the first 44 bits of SHA1(#key .. ':' .. key .. stamp) over its
-- records, in decimal (decision 021). Two regions whose
-- bucket digests match hold the same stamp for every key of that bucket,
-- and so (stamps being unique per write) the same state.
local out = {}
if ARGV[1] == 'rebuild' then
  for i = 1, #KEYS do
    out[i] = digest_rebuild(KEYS[i])
  end
else
  local stored = mcall('HMGET', DIGESTS, unpack(KEYS))
  for i = 1, #KEYS do
    out[i] = stored[i] or ''
  end
end
return out
