-- geosync stamp script: reads the current state of a batch of dirty keys and
-- records the batch's stamp in their metadata, atomically.
--
-- KEYS[1]  the database's flush floor key
-- KEYS[2i], KEYS[2i+1]  a dirty key and its metadata bucket
-- ARGV[1]  the batch stamp
--
-- Returns { changes, retry, unsupported }:
--   changes: { key, 'p', type, expiry, flat } or { key, 'd' } per key to ship
--   retry: key, newer stamp, ... for keys whose metadata holds a stamp newer
--          than ARGV[1] (the agent observes that stamp and tries again)
--   unsupported: key, type, ... for keys of types geosync cannot carry
local stamp = ARGV[1]
local changes, retry, unsupported = {}, {}, {}

local floor = redis.call('GET', KEYS[1])
if floor and floor >= stamp then
  for i = 2, #KEYS, 2 do
    retry[#retry + 1] = KEYS[i]
    retry[#retry + 1] = floor
  end
  return { changes, retry, unsupported }
end

local now = now_ms()
for i = 2, #KEYS, 2 do
  local key, bucket = KEYS[i], KEYS[i + 1]
  local raw = redis.call('HGET', bucket, key)
  local rec = parse_record(raw)
  local state = read_state(key)
  if state == nil then
    if rec == nil or rec.flag == 't' then
      -- nothing there and nothing recorded: nothing to ship
    elseif rec.expiry and rec.expiry <= now then
      -- Expired: every region expires it at the same absolute time on its
      -- own. Keep its stamp as a tombstone so an older change cannot revive it.
      redis.call('HSET', bucket, key, make_record(rec.stamp, 't', NO_DIGEST, nil))
    elseif rec.stamp > stamp then
      retry[#retry + 1] = key
      retry[#retry + 1] = rec.stamp
    else
      redis.call('HSET', bucket, key, make_record(stamp, 't', NO_DIGEST, nil))
      changes[#changes + 1] = { key, 'd' }
    end
  elseif state.unsupported then
    unsupported[#unsupported + 1] = key
    unsupported[#unsupported + 1] = state.t
  else
    local d = digest(state)
    if rec ~= nil and rec.flag == 'v' and rec.digest == d then
      -- unchanged since it was last stamped or applied
    elseif rec ~= nil and rec.stamp > stamp then
      retry[#retry + 1] = key
      retry[#retry + 1] = rec.stamp
    else
      redis.call('HSET', bucket, key, make_record(stamp, 'v', d, state.exp))
      changes[#changes + 1] = { key, 'p', state.t, state.exp, state.flat }
    end
  end
end
return { changes, retry, unsupported }
