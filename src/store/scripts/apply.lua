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
-- dropped; 3 applied without what this server cannot hold (field
-- expiries); or the string 'q <error>' when the server refused to write
-- the value: the key is left as it was (values are built in the private
-- key and renamed into place only once whole), nothing is recorded, and
-- the agent quarantines the change.

-- The reply for a change whose value the server refused.
local function refused(err)
  if type(err) == 'table' then err = err.err end
  return 'q ' .. tostring(err)
end

mcall('INCR', KEYS[2])
-- A key without a record is older than the database's last flush and
-- than the frontier its tombstones were collected up to.
local flushed = mcall('GET', KEYS[1])
local floor = flushed
local collected = mcall('GET', COLLECTED)
if collected and (not floor or collected > floor) then floor = collected end
local out = {}
local a = 1
local now
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
  local rec = parse_record(mcall('HGET', bucket, key))
  local current = floor
  if rec ~= nil then
    current = rec.stamp
    -- A record older than the last flush is one the flush's slices have
    -- not reached yet (decision 018): the flush is what the key holds.
    if flushed and flushed > current then current = flushed end
  end
  if current and current >= stamp then
    if op == 'S' then ucall('UNLINK', building) end
    out[#out + 1] = 0
  elseif op == 'P' then
    if num == 0 then ucall('UNLINK', building) end
    if size_as(building, t) ~= num then
      out[#out + 1] = 0
    else
      local ok, err = pcall(append_items, building, t, ARGV, from, to)
      if ok then
        ucall('PEXPIRE', building, PRIVATE_TTL_MS)
        out[#out + 1] = 1
      else
        ucall('UNLINK', building)
        out[#out + 1] = refused(err)
      end
    end
  elseif op == 'S' then
    if from < 1 or size_as(building, t) ~= from then
      ucall('UNLINK', building)
      out[#out + 1] = 2
    else
      -- UNLINK: a large old value is freed in the background
      ucall('UNLINK', key)
      ucall('RENAME', building, key)
      ucall('PERSIST', key)
      local record = make_record(stamp, 'v', digest_, num)
      if num > 0 then
        ucall('PEXPIREAT', key, num)
        if ucall('EXISTS', key) == 0 then
          record = make_record(stamp, 't', NO_DIGEST, nil)
        end
      end
      mcall('HSET', bucket, key, record)
      digest_moved(bucket, key, rec and rec.stamp, stamp)
      out[#out + 1] = 1
    end
  elseif op == 'p' and t == 'string' and to == from then
    -- A string is written whole by one command, which leaves the key as
    -- it was when the server refuses it: no private copy (decision 021).
    now = now or now_ms()
    local record
    if num > 0 and num <= now then
      -- its expiry had already passed: recorded like an expired key
      ucall('UNLINK', key)
      record = make_record(stamp, 't', NO_DIGEST, nil)
    else
      local state = { t = 'string', exp = num > 0 and num or -1, flat = { ARGV[from] } }
      local r
      if num > 0 then
        r = upcall('SET', key, ARGV[from], 'PXAT', num)
      else
        r = upcall('SET', key, ARGV[from])
      end
      if type(r) == 'table' and r.err then
        record = false
        out[#out + 1] = refused(r)
      else
        record = make_record(stamp, 'v', digest(state), state.exp)
      end
    end
    if record then
      mcall('HSET', bucket, key, record)
      digest_moved(bucket, key, rec and rec.stamp, stamp)
      out[#out + 1] = 1
    end
  elseif op == 'p' then
    -- Built aside, then renamed into place: a write the server refuses
    -- leaves the key as it was.
    ucall('UNLINK', building)
    local ok, degraded = pcall(write_state, building, t, num, ARGV, from, to)
    if not ok then
      ucall('UNLINK', building)
      out[#out + 1] = refused(degraded)
    else
      local state = read_state(building, true)
      ucall('UNLINK', key)
      local record
      if state == nil then
        -- its expiry had already passed: recorded like an expired key
        record = make_record(stamp, 't', NO_DIGEST, nil)
      else
        ucall('RENAME', building, key)
        record = make_record(stamp, 'v', digest(state), state.exp)
      end
      mcall('HSET', bucket, key, record)
      digest_moved(bucket, key, rec and rec.stamp, stamp)
      out[#out + 1] = degraded and 3 or 1
    end
  else
    ucall('UNLINK', key)
    mcall('HSET', bucket, key, make_record(stamp, 't', NO_DIGEST, nil))
    digest_moved(bucket, key, rec and rec.stamp, stamp)
    out[#out + 1] = 1
  end
end
return out
