-- geosync apply script: applies a batch of changes from one peer, each only
-- if its stamp is newer than the stamp recorded for its key, atomically.
--
-- KEYS[1]  the database's flush floor key
-- KEYS[2]  the apply marker key; written first, so the tailer recognises the
--          whole transaction this script replicates as geosync's own
-- KEYS[2i+1], KEYS[2i+2]  a changed key and its metadata bucket
-- ARGV  per change: stamp, op ('p' or 'd'); for 'p' also type, expiry,
--       item count n, then n items of the flat value
--
-- Returns per change: 1 applied, 0 older (or equal) than what is recorded.
redis.call('INCR', KEYS[2])
local floor = redis.call('GET', KEYS[1])
local out = {}
local a = 1
for i = 3, #KEYS, 2 do
  local key, bucket = KEYS[i], KEYS[i + 1]
  local stamp, op = ARGV[a], ARGV[a + 1]
  local t, exp, from, to
  if op == 'p' then
    t, exp = ARGV[a + 2], tonumber(ARGV[a + 3])
    local n = tonumber(ARGV[a + 4])
    from, to = a + 5, a + 4 + n
    a = to + 1
  else
    a = a + 2
  end
  local rec = parse_record(redis.call('HGET', bucket, key))
  local current = floor
  if rec ~= nil then current = rec.stamp end
  if current and current >= stamp then
    out[#out + 1] = 0
  else
    redis.call('DEL', key)
    local record
    if op == 'p' then
      write_state(key, t, exp, ARGV, from, to)
      local state = read_state(key)
      if state == nil then
        -- its expiry had already passed: recorded like an expired key
        record = make_record(stamp, 't', NO_DIGEST, nil)
      else
        record = make_record(stamp, 'v', digest(state), state.exp)
      end
    else
      record = make_record(stamp, 't', NO_DIGEST, nil)
    end
    redis.call('HSET', bucket, key, record)
    out[#out + 1] = 1
  end
end
return out
