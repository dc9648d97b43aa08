-- geosync stamp script: reads the current state of a batch of dirty keys and
-- records the batch's stamp in their metadata, atomically.
--
-- KEYS[1]  the database's flush floor key
-- KEYS[2i], KEYS[2i+1]  a dirty key and its metadata bucket
-- ARGV[1]  the batch stamp
-- ARGV[2]  re-ship floor, or '' : after the agent restarts, keys whose
--          recorded stamp is this node's own (ends with ARGV[3]) and newer
--          than ARGV[2] may never have reached every peer; when unchanged
--          they are shipped again with their recorded stamp
-- ARGV[3]  this node's id as the last 4 hex digits of its stamps
-- ARGV[4]  how each key was seen, one letter per key ('' : all 'l'):
--          'l' the live stream: a change gets ARGV[1];
--          's' a full resync's snapshot (decision 019): the change happened
--          at some unknown time after its record, so it is stamped just
--          above the newest of its record, the database's floors and what
--          the region had reached (ARGV[5]), never above a write made
--          later; with none of these (a Redis geosync never wrote to) it
--          gets ARGV[1];
--          'f' the live stream, for a key given such a stamp during this
--          resync: a client wrote it since, so it is stamped ARGV[1] even
--          when its state still matches the record
--          'c' reported while the agent caught up with what happened
--          while it was away (a resync's backlog or recorded keys): as 'l'
-- ARGV[5]  the stamp this region had reached (its `__geosync:reached`
--          key when the resync began), or ''
-- ARGV[6]  '1' when this Redis may evict keys with a TTL and evictions stay
--          local: a key with an expiry found gone in modes 's' and 'c' may
--          have been evicted while no one watched, and is not deleted in
--          other regions (they expire it at the same time); '' otherwise
--
-- Returns { changes, retry, unsupported, deferred, low }:
--   changes: { key, stamp, 'p', type, expiry, flat } or { key, stamp, 'd' }
--   retry: key, newer stamp, ... for keys whose metadata holds a stamp newer
--          than ARGV[1] (the agent observes that stamp and tries again)
--   unsupported: key, reason, ... for keys geosync cannot carry: the type
--          name of a module type, or 'too_large:<type>:<elements>'
--   deferred: keys left for the next batch once MAX_ELEMENTS elements were
--          read, so that one script never blocks Redis for long
--   low: keys whose change got a stamp below ARGV[1] (mode 's')
--   evicted: keys taken as evicted while no one watched (ARGV[6])
local stamp, reship, me = ARGV[1], ARGV[2], ARGV[3]
local modes, reached, evictable = ARGV[4] or '', ARGV[5] or '', ARGV[6] == '1'
local changes, retry, unsupported, deferred, low, evicted = {}, {}, {}, {}, {}, {}

-- Recorded by this very call's stamp (an earlier try of it ran but its
-- reply was lost, and the agent tries again with the same stamp), or by
-- this node after the re-ship floor: maybe never delivered.
local function own_unacked(rec)
  if rec.stamp == stamp then return true end
  return reship ~= '' and rec.stamp > reship and string.sub(rec.stamp, -4) == me
end

local floor = mcall('GET', KEYS[1])
if floor and floor >= stamp then
  for i = 2, #KEYS, 2 do
    retry[#retry + 1] = KEYS[i]
    retry[#retry + 1] = floor
  end
  return { changes, retry, unsupported, deferred, low, evicted }
end

local collected = mcall('GET', COLLECTED)

-- The stamp of a change first seen in a snapshot (mode 's', decision 019):
-- just above the newest stamp the key or the region is known to have had.
local function seen_stamp(rec)
  local base = ''
  for _, s in ipairs({ rec and rec.stamp or '', floor or '', collected or '', reached }) do
    if #s == STAMP_LEN and s > base then base = s end
  end
  if base == '' then return stamp end
  return stamp_above(base, me)
end

local now = now_ms()
-- Stamps one key (see the header for what goes where), given its record
-- (false: none) and its state (nil: no key), both read by this script.
local function stamp_key(key, bucket, mode, raw, state)
  local stored = parse_record(raw or nil)
  local old = stored and stored.stamp
  -- A record older than the database's last flush is one the flush's
  -- slices have not dropped yet (decision 018): the key has none.
  local rec = stored
  if rec ~= nil and floor and rec.stamp < floor then rec = nil end
  -- The stamp a change of this key gets; above ARGV[1] only when the
  -- clock is behind what the region had reached (then it is retried).
  local at = stamp
  if mode == 's' then at = seen_stamp(rec) end
  -- a client wrote the key since a snapshot gave it a low stamp
  local rewritten = mode == 'f' and rec ~= nil and rec.stamp < stamp
  if state == nil then
    if rec ~= nil and rec.flag == 't' and rewritten then
      mcall('HSET', bucket, key, make_record(stamp, 't', NO_DIGEST, nil))
      digest_moved(bucket, key, old, stamp)
      changes[#changes + 1] = { key, stamp, 'd' }
    elseif rec ~= nil and rec.flag == 't' and own_unacked(rec) then
      changes[#changes + 1] = { key, rec.stamp, 'd' }
    elseif rec == nil or rec.flag == 't' then
      -- nothing there and nothing recorded: nothing to ship
    elseif rec.expiry and rec.expiry <= now then
      -- Expired: every region expires it at the same absolute time on its
      -- own. Keep its stamp as a tombstone so an older change cannot revive it.
      mcall('HSET', bucket, key, make_record(rec.stamp, 't', NO_DIGEST, nil))
    elseif evictable and rec.expiry and (mode == 's' or mode == 'c') then
      -- Maybe evicted while no one watched: kept elsewhere until it expires
      -- there; the record stays, as after an eviction seen live.
      evicted[#evicted + 1] = key
    elseif rec.stamp > stamp or at > stamp then
      retry[#retry + 1] = key
      retry[#retry + 1] = rec.stamp > at and rec.stamp or at
    else
      mcall('HSET', bucket, key, make_record(at, 't', NO_DIGEST, nil))
      digest_moved(bucket, key, old, at)
      changes[#changes + 1] = { key, at, 'd' }
      if at ~= stamp then low[#low + 1] = key end
    end
  elseif state.unsupported then
    unsupported[#unsupported + 1] = key
    unsupported[#unsupported + 1] = state.reason
  else
    local d = digest(state)
    if rec ~= nil and rec.flag == 'v' and rec.digest == d and not rewritten then
      -- unchanged since it was last stamped or applied
      if own_unacked(rec) then
        changes[#changes + 1] = { key, rec.stamp, 'p', state.t, state.exp, state.flat }
      end
    elseif (rec ~= nil and rec.stamp > stamp) or at > stamp then
      retry[#retry + 1] = key
      retry[#retry + 1] = (rec ~= nil and rec.stamp > at) and rec.stamp or at
    else
      mcall('HSET', bucket, key, make_record(at, 'v', d, state.exp))
      digest_moved(bucket, key, old, at)
      changes[#changes + 1] = { key, at, 'p', state.t, state.exp, state.flat }
      if at ~= stamp then low[#low + 1] = key end
    end
  end
end

-- The script works in three passes, so that it switches databases three
-- times in all rather than three times per key (decision 021): every
-- record, then every state until MAX_ELEMENTS elements were read, then the
-- stamps. Keys are distinct, so no pass changes what another read.
local n = (#KEYS - 1) / 2
local raws, states = {}, {}
for m = 1, n do
  raws[m] = mcall('HGET', KEYS[2 * m + 1], KEYS[2 * m])
end
local upto = n
for m = 1, n do
  if elements_read >= MAX_ELEMENTS then
    upto = m - 1
    break
  end
  states[m] = read_state(KEYS[2 * m])
end
for m = 1, upto do
  stamp_key(KEYS[2 * m], KEYS[2 * m + 1], string.sub(modes, m, m), raws[m], states[m])
end
for m = upto + 1, n do
  deferred[#deferred + 1] = KEYS[2 * m]
end
return { changes, retry, unsupported, deferred, low, evicted }
