-- geosync reach script: records the stamp this region has reached (what it
-- tells peers it delivered), the bound a change first seen in a later
-- snapshot is stamped above (decision 019).
--
-- KEYS[1]  the region's reached key (in the metadata database)
-- ARGV[1]  the replication id of the stream the agent has stamped
-- ARGV[2]  the stamp
--
-- Writes only into the Redis whose stream the agent follows: a Redis that
-- restarted from an older snapshot, or a replica promoted without
-- everything, has another replication id until the agent resynced with it,
-- and must keep the older bound its data goes with. Returns 1 when the key
-- holds at least ARGV[2], 0 when this is another Redis.
local info = redis.call('INFO', 'replication')
if not string.find(info, 'master_replid:' .. ARGV[1], 1, true) then
  return 0
end
local current = mcall('GET', KEYS[1])
if not current or ARGV[2] > current then
  mcall('SET', KEYS[1], ARGV[2])
end
return 1
