-- geosync read script: the recorded state of a batch of keys, each with the
-- stamp its metadata holds, for a peer rebuilding its region.
--
-- KEYS[2i-1], KEYS[2i]  a key and its metadata bucket
-- ARGV[1]  only records stamped after this ('' for all)
-- ARGV[2]  only records whose stamp ends with this node suffix ('' for all)
--
-- Returns { changes, {}, unsupported, {} } in the stamp script's shape; keys
-- without a record, or whose value changed since it was recorded (a local
-- write the stamper has not reached yet: it ships on its own), are left
-- out. Collections too large to read here are listed in `unsupported` with
-- their reason ('too_large:<type>:<elements>'): they travel in pieces.
local after, own = ARGV[1] or '', ARGV[2] or ''
local changes, unsupported = {}, {}
for i = 1, #KEYS, 2 do
  local key, bucket = KEYS[i], KEYS[i + 1]
  local rec = parse_record(mcall('HGET', bucket, key))
  if rec ~= nil and (after == '' or rec.stamp > after)
      and (own == '' or string.sub(rec.stamp, -#own) == own) then
    local state = read_state(key)
    if rec.flag == 't' then
      if state == nil then
        changes[#changes + 1] = { key, rec.stamp, 'd' }
      end
    elseif state == nil then
      -- deleted since it was recorded: the stamper ships that
    elseif state.unsupported then
      unsupported[#unsupported + 1] = key
      unsupported[#unsupported + 1] = state.reason
    elseif digest(state) == rec.digest then
      changes[#changes + 1] = { key, rec.stamp, 'p', state.t, state.exp, state.flat }
    end
  end
end
return { changes, {}, unsupported, {} }
