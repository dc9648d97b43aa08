-- geosync claim script: records the stamp of a collection that travels in
-- pieces, once its digest is known (decision 009), but only if nothing
-- recorded a change of the key since it was frozen.
--
-- KEYS[1]  the database's flush floor key
-- KEYS[2]  the key
-- KEYS[3]  its metadata bucket
-- ARGV[1]  the stamp
-- ARGV[2]  the record the freeze script returned ('' none)
-- ARGV[3]  the digest of the frozen copy
-- ARGV[4]  its expiry in ms (-1 none)
--
-- Returns { 'ok' }, or { 'retry', stamp } when the floor or the record moved
-- on (the stamp is the newer one, '' when the record went away).
local stamp, seen = ARGV[1], ARGV[2]
local key, bucket = KEYS[2], KEYS[3]
local floor = mcall('GET', KEYS[1])
if floor and floor >= stamp then return { 'retry', floor } end
local raw = mcall('HGET', bucket, key) or ''
if raw ~= seen then
  local rec = parse_record(raw ~= '' and raw or nil)
  if rec ~= nil then return { 'retry', rec.stamp } end
  return { 'retry', '' }
end
mcall('HSET', bucket, key, make_record(stamp, 'v', ARGV[3], tonumber(ARGV[4])))
local before = parse_record(seen ~= '' and seen or nil)
digest_moved(bucket, key, before and before.stamp, stamp)
return { 'ok' }
