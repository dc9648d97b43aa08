-- geosync apply script: applies a batch of changes from one peer, each only
-- if its stamp is newer than the stamp recorded for its key, atomically.
--
-- KEYS[1]  the database's flush floor key
-- KEYS[2]  the apply marker key; written first, so the tailer recognises the
--          whole transaction this script replicates as geosync's own
-- KEYS[3i], KEYS[3i+1], KEYS[3i+2]  a changed key, its metadata bucket, and
--          the key a collection travelling in pieces is built in
--          (`__geosync:in:<stamp>:<key>`)
-- ARGV  per change: stamp, op, then
--   'p' (the whole value): type, expiry, item count n, n items
--   'd' (delete): nothing
--   'P' (a piece, decision 009): type, elements before it, item count n, n items
--   'S' (the seal after the pieces): type, expiry, elements, digest
--
-- Returns per change: 1 applied, 0 older (or equal) than what is recorded
-- (or a piece that does not continue what was built), 2 a seal that does
-- not match what was built: a piece went missing, and the built key is
-- dropped.
redis.call('INCR', KEYS[2])
local floor = redis.call('GET', KEYS[1])
local out = {}
local a = 1
for i = 3, #KEYS, 3 do
  local key, bucket, building = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local stamp, op = ARGV[a], ARGV[a + 1]
  local t, num, from, to, digest_
  if op == 'p' or op == 'P' then
    t, num = ARGV[a + 2], tonumber(ARGV[a + 3])
    local n = tonumber(ARGV[a + 4])
    from, to = a + 5, a + 4 + n
    a = to + 1
  elseif op == 'S' then
    t, num = ARGV[a + 2], tonumber(ARGV[a + 3])
    from, digest_ = tonumber(ARGV[a + 4]), ARGV[a + 5]
    a = a + 6
  else
    a = a + 2
  end
  local rec = parse_record(redis.call('HGET', bucket, key))
  local current = floor
  if rec ~= nil then current = rec.stamp end
  if current and current >= stamp then
    if op == 'S' then redis.call('UNLINK', building) end
    out[#out + 1] = 0
  elseif op == 'P' then
    if num == 0 then redis.call('UNLINK', building) end
    if size_as(building, t) ~= num then
      out[#out + 1] = 0
    else
      append_items(building, t, ARGV, from, to)
      redis.call('PEXPIRE', building, PRIVATE_TTL_MS)
      out[#out + 1] = 1
    end
  elseif op == 'S' then
    if from < 1 or size_as(building, t) ~= from then
      redis.call('UNLINK', building)
      out[#out + 1] = 2
    else
      -- UNLINK: a large old value is freed in the background
      redis.call('UNLINK', key)
      redis.call('RENAME', building, key)
      redis.call('PERSIST', key)
      local record = make_record(stamp, 'v', digest_, num)
      if num > 0 then
        redis.call('PEXPIREAT', key, num)
        if redis.call('EXISTS', key) == 0 then
          record = make_record(stamp, 't', NO_DIGEST, nil)
        end
      end
      redis.call('HSET', bucket, key, record)
      digest_moved(bucket, key, rec and rec.stamp, stamp)
      out[#out + 1] = 1
    end
  else
    redis.call('UNLINK', key)
    local record
    if op == 'p' then
      write_state(key, t, num, ARGV, from, to)
      local state = read_state(key, true)
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
    digest_moved(bucket, key, rec and rec.stamp, stamp)
    out[#out + 1] = 1
  end
end
return out
