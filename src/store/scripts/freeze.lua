-- geosync freeze script: copies a collection too large to read in one
-- script to a private key, so that the agent can read the copy in pieces
-- while clients go on writing the original (decision 009). Nothing writes
-- to the copy, so reading it by index or by SCAN cursor is consistent.
--
-- KEYS[1]  the database's flush floor key
-- KEYS[2]  the key
-- KEYS[3]  its metadata bucket
-- KEYS[4]  the name of the copy
-- ARGV[1]  the stamp the copy is meant to be shipped with, or '' when it is
--          to be shipped with its recorded stamp (catch-up, rebuild)
--
-- Returns one of
--   { 'frozen', type, expiry ms (-1 none), elements, record ('' none) }
--   { 'retry', newer stamp }  the floor or the key's record is newer
--   { 'whole' }  the key is gone, or of a type or size that travels whole
local stamp = ARGV[1]
local key, bucket, copy = KEYS[2], KEYS[3], KEYS[4]
local t = ucall('TYPE', key)['ok']
if not PIECEWISE[t] then return { 'whole' } end
local n = ucall(SIZE_OF[t], key)
if n <= MAX_ELEMENTS then return { 'whole' } end
local raw = mcall('HGET', bucket, key)
if stamp ~= '' then
  local floor = mcall('GET', KEYS[1])
  if floor and floor >= stamp then return { 'retry', floor } end
  local rec = parse_record(raw)
  if rec ~= nil and rec.stamp >= stamp then return { 'retry', rec.stamp } end
end
ucall('COPY', key, copy, 'REPLACE')
ucall('PEXPIRE', copy, PRIVATE_TTL_MS)
return { 'frozen', t, ucall('PEXPIRETIME', key), n, raw or '' }
