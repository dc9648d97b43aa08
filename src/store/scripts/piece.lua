-- geosync piece script: one piece of a frozen copy (see freeze.lua).
--
-- KEYS[1]  the copy
-- ARGV[1]  its type: list, set, zset or hash
-- ARGV[2]  where to go on: an index (list, zset) or a SCAN cursor (set,
--          hash); '0' to start
-- ARGV[3]  elements per piece (a SCAN takes it as a hint)
--
-- Returns { next position ('' after the last piece), flat items, refusal }.
-- The refusal is '' or why the copy cannot be shipped: 'gone' when it
-- disappeared (a FLUSHALL, or its TTL), 'hash+ttl' for a hash some of whose
-- fields expire.
local copy, t, pos, n = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if ucall('EXISTS', copy) == 0 then return { '', {}, 'gone' } end
local items, nxt
if t == 'list' or t == 'zset' then
  local i = tonumber(pos)
  if t == 'list' then
    items = ucall('LRANGE', copy, i, i + n - 1)
    if #items == n then nxt = tostring(i + n) else nxt = '' end
  else
    items = ucall('ZRANGE', copy, i, i + n - 1, 'WITHSCORES')
    if #items == 2 * n then nxt = tostring(i + n) else nxt = '' end
  end
else
  local cmd = 'SSCAN'
  if t == 'hash' then cmd = 'HSCAN' end
  local r = ucall(cmd, copy, pos, 'COUNT', n)
  items = r[2]
  if r[1] == '0' then nxt = '' else nxt = r[1] end
  if t == 'hash' then
    local fields = {}
    for i = 1, #items, 2 do fields[#fields + 1] = items[i] end
    if #fields > 0 and field_expiries(copy, fields) then
      return { '', {}, 'hash+ttl' }
    end
  end
end
return { nxt, items, '' }
