-- geosync: functions shared by the stamp and apply scripts.
--
-- Every script runs in the user database it works on (the agent SELECTs
-- it) and is given that database as its last argument, which is taken off
-- ARGV here. geosync's metadata lives in the metadata database, META_DB,
-- which holds nothing else (decision 020): `mcall` runs a command there,
-- `ucall` and `upcall` in the user database, switching only when the
-- previous command ran in the other one. Redis restores the caller's
-- database after the script, and replicates the switches with the
-- commands.
local META_DB = 15 -- @metadata-db
local USER_DB = tonumber(table.remove(ARGV))
local selected_db = USER_DB
local function use_db(db)
  if selected_db ~= db then
    redis.call('SELECT', db)
    selected_db = db
  end
end
-- A command's error names the command: the script line that raised it
-- is this function's, which says nothing (a missing ACL permission, say).
local function call_in(db, cmd, ...)
  use_db(db)
  local r = redis.pcall(cmd, ...)
  if type(r) == 'table' and r.err then
    error({ err = r.err .. " (command '" .. string.upper(cmd) .. "')" })
  end
  return r
end
local function mcall(...)
  return call_in(META_DB, ...)
end
local function ucall(...)
  return call_in(USER_DB, ...)
end
local function upcall(...)
  use_db(USER_DB)
  return redis.pcall(...)
end
-- The user database's keys in the metadata database (store/layout.rs).
local FLOOR = '__geosync:floor:' .. USER_DB
local COLLECTED = '__geosync:collected:' .. USER_DB
-- Anti-entropy digests (decision 013), a field per bucket name.
local DIGESTS = '__geosync:dg:' .. USER_DB

-- A metadata record is one hash field per user key, in the bucket hash
-- named by the agent (KEYS), in META_DB. Its value is
--   stamp (20 hex) .. flag ('v' value, 't' tombstone) .. digest (16 hex) .. expiry ms (decimal, empty if none)
-- Stamps compare as plain strings (fixed-width lowercase hex).

local STAMP_LEN = 20
local NO_DIGEST = '0000000000000000'
local CHUNK = 512
-- A collection with more elements than this is not read (reading it in one
-- script would block Redis for seconds); the agent sets it from
-- --max-key-elements. Also the elements one stamp script reads before it
-- leaves the remaining keys to the next batch.
local MAX_ELEMENTS = 250000 -- @max-key-elements
local elements_read = 0
-- A value larger than this (bytes, with a small allowance per item) fits
-- in no message a peer accepts; the agent sets it from
-- --peer-max-message-mb. It is reported unsupported, not read further.
local MAX_BYTES = 67100672 -- @max-value-bytes
local SIZE_OF = { list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN' }
-- Types that travel in pieces past MAX_ELEMENTS (decision 009).
local PIECEWISE = { list = true, set = true, zset = true, hash = true }
-- Lifetime of geosync's private copies and partly built keys: long enough
-- for any transfer, short enough that an abandoned one does not linger.
local PRIVATE_TTL_MS = 3600000

-- Elements of a key of type t, 0 when it does not exist, -1 when it holds
-- another type.
local function size_as(key, t)
  local actual = ucall('TYPE', key)['ok']
  if actual == 'none' then return 0 end
  if actual ~= t then return -1 end
  return ucall(SIZE_OF[t], key)
end

local function parse_record(rec)
  if not rec then return nil end
  return {
    stamp = string.sub(rec, 1, STAMP_LEN),
    flag = string.sub(rec, STAMP_LEN + 1, STAMP_LEN + 1),
    digest = string.sub(rec, STAMP_LEN + 2, STAMP_LEN + 17),
    expiry = tonumber(string.sub(rec, STAMP_LEN + 18)),
  }
end

-- The smallest stamp of node `me` (4 hex digits) whose time is one tick
-- after stamp `s`'s: "just above" `s`, below every stamp made later.
local function stamp_above(s, me)
  local out, carry = {}, 1
  for i = 16, 1, -1 do
    local d = tonumber(string.sub(s, i, i), 16) + carry
    carry = 0
    if d == 16 then d, carry = 0, 1 end
    out[i] = string.format('%x', d)
  end
  return table.concat(out) .. me
end

local function make_record(stamp, flag, digest, expiry)
  local e = ''
  if expiry and expiry > 0 then e = tostring(expiry) end
  return stamp .. flag .. digest .. e
end

-- Anti-entropy digests (decision 013, format of decision 021): per
-- metadata bucket, the sum of H(key, stamp) over its records, where H is
-- the first 44 bits of SHA1(#key .. ':' .. key .. stamp). They are kept as
-- integers in the hash DIGESTS (one per database, a field per bucket name,
-- absent when the sum is 0) by every script that changes a record's stamp,
-- with one HINCRBY, so that comparing regions reads 16384 stored digests
-- instead of every record. A bucket would need 2^19 records to overflow
-- (8.6 billion keys in one database; Redis holds at most 2^32).
local HASH_HEX = 11
-- Lua numbers are doubles, exact below 2^53: sums are handed to Redis
-- before they reach it.
local EXACT_BELOW = 2 ^ 52

local function record_hash(key, stamp)
  return tonumber(string.sub(redis.sha1hex(#key .. ':' .. key .. stamp), 1, HASH_HEX), 16)
end

-- Computes a bucket's digest from its records and stores it; returns it
-- ('' when the bucket is empty).
local function digest_rebuild(bucket)
  mcall('HDEL', DIGESTS, bucket)
  local flat = mcall('HGETALL', bucket)
  local acc = 0
  for i = 1, #flat, 2 do
    acc = acc + record_hash(flat[i], string.sub(flat[i + 1], 1, STAMP_LEN))
    if acc >= EXACT_BELOW then
      mcall('HINCRBY', DIGESTS, bucket, string.format('%d', acc))
      acc = 0
    end
  end
  if acc > 0 then mcall('HINCRBY', DIGESTS, bucket, string.format('%d', acc)) end
  return mcall('HGET', DIGESTS, bucket) or ''
end

-- The recorded stamp of `key` in `bucket` went from `old` to `new` (nil:
-- no record), the record itself already written: its bucket's digest
-- follows. A stored digest that is not a number (written by hand, or by
-- an earlier format) is computed again from the records.
local function digest_moved(bucket, key, old, new)
  if old == new then return end
  local d = 0
  if old then d = d - record_hash(key, old) end
  if new then d = d + record_hash(key, new) end
  use_db(META_DB)
  local acc = redis.pcall('HINCRBY', DIGESTS, bucket, string.format('%d', d))
  if type(acc) == 'table' then
    digest_rebuild(bucket)
  elseif acc == 0 then
    mcall('HDEL', DIGESTS, bucket)
  end
end

local function sorted_pairs(flat)
  local idx = {}
  for i = 1, #flat, 2 do idx[#idx + 1] = i end
  table.sort(idx, function(a, b) return flat[a] < flat[b] end)
  local out = {}
  for _, i in ipairs(idx) do
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
  end
  return out
end

local function or_empty(v)
  if v == false or v == nil then return '' end
  return tostring(v)
end

local function read_stream(key)
  local info = ucall('XINFO', 'STREAM', key)
  local f = {}
  for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
  local out = { f['last-generated-id'], tostring(f['entries-added']), f['max-deleted-entry-id'] }
  local groups = ucall('XINFO', 'GROUPS', key)
  out[#out + 1] = tostring(#groups)
  for _, g in ipairs(groups) do
    local gf = {}
    for i = 1, #g, 2 do gf[g[i]] = g[i + 1] end
    out[#out + 1] = gf['name']
    out[#out + 1] = gf['last-delivered-id']
    out[#out + 1] = or_empty(gf['entries-read'])
  end
  local entries = ucall('XRANGE', key, '-', '+')
  for _, e in ipairs(entries) do
    out[#out + 1] = e[1]
    out[#out + 1] = tostring(#e[2])
    for _, x in ipairs(e[2]) do out[#out + 1] = x end
  end
  return out
end

-- Field expiry (HPEXPIRETIME, Redis 7.4+): nil when the server has none.
local function field_expiries(key, fields)
  local out = {}
  local any = false
  for i = 1, #fields, CHUNK do
    local args = { 'HPEXPIRETIME', key, 'FIELDS', 0 }
    for j = i, math.min(i + CHUNK - 1, #fields) do args[#args + 1] = fields[j] end
    args[4] = #args - 4
    local r = upcall(unpack(args))
    if type(r) == 'table' and r.err then return nil end
    for _, e in ipairs(r) do
      out[#out + 1] = e
      if e > 0 then any = true end
    end
  end
  if any then return out end
  return nil
end

-- Most keys are strings, read here with one call: the value (at most
-- MAX_BYTES + 1 bytes of it unless `whole`), then the expiry. Returns the
-- state and true when the key is a string or (`whole`) is known to be
-- gone; nil and false when TYPE must tell (an empty string reads like no
-- key, and another type or an error like any other type).
local function read_string(key, whole)
  local v
  if whole then
    v = upcall('GET', key)
    if v == false then return nil, true end
  else
    v = upcall('GETRANGE', key, 0, MAX_BYTES)
    if v == '' then return nil, false end
  end
  if type(v) ~= 'string' then return nil, false end
  local exp = ucall('PEXPIRETIME', key)
  if #v > MAX_BYTES and not whole then
    return { t = 'string', exp = exp, flat = {}, unsupported = true,
             reason = 'too_large_bytes:string:' .. ucall('STRLEN', key) }, true
  end
  elements_read = elements_read + 1
  return { t = 'string', exp = exp, flat = { v } }, true
end

-- The key's state: type name, absolute expiry in ms (-1 for none) and the
-- flat value (see change.rs), or nil when the key does not exist. A hash
-- with field expiries is 'hash+ttl', its flat value field, value, expiry.
-- A collection over MAX_ELEMENTS is reported unsupported with reason
-- 'too_large:<type>:<elements>' unless `whole` is set.
local function read_state(key, whole)
  local s, known = read_string(key, whole)
  if known then return s end
  local t = ucall('TYPE', key)['ok']
  if t == 'none' then return nil end
  local exp = ucall('PEXPIRETIME', key)
  if SIZE_OF[t] then
    local n = ucall(SIZE_OF[t], key)
    if n > MAX_ELEMENTS and not whole then
      return { t = t, exp = exp, flat = {}, unsupported = true,
               reason = 'too_large:' .. t .. ':' .. n }
    end
    elements_read = elements_read + n
  else
    elements_read = elements_read + 1
  end
  local function too_big(n)
    return { t = t, exp = exp, flat = {}, unsupported = true,
             reason = 'too_large_bytes:' .. t .. ':' .. n }
  end
  local flat
  if t == 'string' then
    local n = ucall('STRLEN', key)
    if n > MAX_BYTES and not whole then return too_big(n) end
    flat = { ucall('GET', key) }
  elseif t == 'list' then
    flat = ucall('LRANGE', key, 0, -1)
  elseif t == 'set' then
    flat = ucall('SMEMBERS', key)
    table.sort(flat)
  elseif t == 'zset' then
    flat = ucall('ZRANGE', key, 0, -1, 'WITHSCORES')
  elseif t == 'hash' then
    flat = sorted_pairs(ucall('HGETALL', key))
    local fields = {}
    for i = 1, #flat, 2 do fields[#fields + 1] = flat[i] end
    local exps = field_expiries(key, fields)
    if exps then
      local triples = {}
      for i = 1, #fields do
        triples[#triples + 1] = flat[2 * i - 1]
        triples[#triples + 1] = flat[2 * i]
        triples[#triples + 1] = tostring(exps[i])
      end
      t, flat = 'hash+ttl', triples
    end
  elseif t == 'stream' then
    flat = read_stream(key)
  else
    return { t = t, exp = exp, flat = {}, unsupported = true, reason = t }
  end
  if not whole and t ~= 'string' then
    local n = 0
    for _, x in ipairs(flat) do n = n + #x + 5 end
    if n > MAX_BYTES then return too_big(n) end
  end
  return { t = t, exp = exp, flat = flat }
end

-- A short digest of a state; equal states give equal digests.
local function digest(state)
  if state.t == 'string' and #state.flat == 1 then
    local v = state.flat[1]
    return string.sub(redis.sha1hex('string|' .. tostring(state.exp) .. '|1|' .. #v .. ':' .. v), 1, 16)
  end
  local parts = { state.t, tostring(state.exp), tostring(#state.flat) }
  for _, x in ipairs(state.flat) do
    parts[#parts + 1] = #x .. ':' .. x
  end
  return string.sub(redis.sha1hex(table.concat(parts, '|')), 1, 16)
end

-- A record older than the database's last flush, which a peer's flush
-- left for its slices (decision 018): the record goes, and its key too,
-- unless the key was written since the flush began, `age_s` seconds ago
-- at most: touched since (OBJECT IDLETIME, which does not touch the key
-- itself; every key under an LFU policy, where Redis keeps no idle time)
-- and no longer what the record describes. Such a write is newer than the
-- flush; the agent stamps it (it is in the stream). The bucket's digest
-- follows unless `digest_later` (the caller computes it once per bucket).
-- Returns 'deleted', 'kept' or 'gone' (no key).
local function drop_flushed(bucket, key, rec, age_s, digest_later)
  mcall('HDEL', bucket, key)
  if not digest_later then digest_moved(bucket, key, rec.stamp, nil) end
  local ok, idle = pcall(ucall, 'OBJECT', 'IDLETIME', key)
  if ok and not idle then return 'gone' end
  if not ok or idle <= age_s then
    if ucall('EXISTS', key) == 0 then return 'gone' end
    if rec.flag == 't' then return 'kept' end
    local state = read_state(key, true)
    if state ~= nil and digest(state) ~= rec.digest then return 'kept' end
  end
  ucall('UNLINK', key)
  return 'deleted'
end

local function push_chunks(cmd, key, items, from, to, step)
  local args = {}
  for i = from, to do
    args[#args + 1] = items[i]
    if #args >= CHUNK * step then
      ucall(cmd, key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then ucall(cmd, key, unpack(args)) end
end

local function write_stream(key, flat, from, to)
  local last_id, added, max_del = flat[from], flat[from + 1], flat[from + 2]
  local ngroups = tonumber(flat[from + 3])
  local i = from + 4
  local groups = {}
  for _ = 1, ngroups do
    groups[#groups + 1] = { flat[i], flat[i + 1], flat[i + 2] }
    i = i + 3
  end
  local any = false
  while i <= to do
    local id, n = flat[i], tonumber(flat[i + 1])
    local args = { 'XADD', key, id }
    for j = i + 2, i + 1 + n do args[#args + 1] = flat[j] end
    ucall(unpack(args))
    any = true
    i = i + 2 + n
  end
  if not any then
    -- An empty stream: create it through a throw-away group.
    ucall('XGROUP', 'CREATE', key, '__geosync:tmp', '0', 'MKSTREAM')
    ucall('XGROUP', 'DESTROY', key, '__geosync:tmp')
  end
  ucall('XSETID', key, last_id, 'ENTRIESADDED', added, 'MAXDELETEDID', max_del)
  for _, g in ipairs(groups) do
    if g[3] ~= '' then
      ucall('XGROUP', 'CREATE', key, g[1], g[2], 'ENTRIESREAD', g[3])
    else
      ucall('XGROUP', 'CREATE', key, g[1], g[2])
    end
  end
end

-- Adds the elements in flat[from..to] to a list (at its end), set, sorted
-- set or hash; true when t is one of those.
local function append_items(key, t, flat, from, to)
  if t == 'list' then
    push_chunks('RPUSH', key, flat, from, to, 1)
  elseif t == 'set' then
    push_chunks('SADD', key, flat, from, to, 1)
  elseif t == 'zset' then
    local swapped = {}
    for i = from, to, 2 do
      swapped[#swapped + 1] = flat[i + 1]
      swapped[#swapped + 1] = flat[i]
    end
    push_chunks('ZADD', key, swapped, 1, #swapped, 2)
  elseif t == 'hash' then
    push_chunks('HSET', key, flat, from, to, 2)
  else
    return false
  end
  return true
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- True when `err` (a redis.pcall error) says the server has no such
-- command: field expiries on a server older than Redis 7.4.
local function is_unknown_command(err)
  local msg = string.lower(err.err or '')
  return string.find(msg, 'unknown', 1, true) ~= nil
     and string.find(msg, 'command', 1, true) ~= nil
end

-- Writes a hash's fields with their expiries (flat: field, value, expiry
-- triples). On a server without field expiry the fields are written
-- without them, those already expired left out; returns true then.
local function write_hash_ttl(key, flat, from, to)
  local pairs_ = {}
  for i = from, to, 3 do
    pairs_[#pairs_ + 1] = flat[i]
    pairs_[#pairs_ + 1] = flat[i + 1]
  end
  push_chunks('HSET', key, pairs_, 1, #pairs_, 2)
  local degraded = false
  local now = nil
  for i = from, to, 3 do
    local e = tonumber(flat[i + 2])
    if e and e > 0 then
      if not degraded then
        local r = upcall('HPEXPIREAT', key, e, 'FIELDS', 1, flat[i])
        if type(r) == 'table' and r.err then
          if not is_unknown_command(r) then error(r) end
          degraded = true
        end
      end
      if degraded then
        now = now or now_ms()
        if e <= now then ucall('HDEL', key, flat[i]) end
      end
    end
  end
  return degraded
end

-- Writes a state into a key that does not exist. `flat` holds the value in
-- items from..to. Raises the server's error when it refuses a write (the
-- caller writes into a private key, so nothing half-written shows); returns
-- true when the value was written without what this server cannot hold
-- (field expiries).
local function write_state(key, t, exp, flat, from, to)
  local degraded = false
  if t == 'string' then
    ucall('SET', key, flat[from])
  elseif append_items(key, t, flat, from, to) then
    -- a list, set, sorted set or hash
  elseif t == 'hash+ttl' then
    degraded = write_hash_ttl(key, flat, from, to)
  elseif t == 'stream' then
    write_stream(key, flat, from, to)
  else
    error({ err = 'geosync: cannot write type ' .. t })
  end
  if exp and exp > 0 then
    ucall('PEXPIREAT', key, exp)
  end
  return degraded
end
