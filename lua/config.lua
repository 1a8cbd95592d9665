-- config.lua: set or remove one shared limit override, seen by every process at its next call.
--
-- KEYS[1]   the limits hash of a shaper; field -> "<rate> <burst>"
-- ARGV[1]   "set" or "del"
-- ARGV[2]   field, e.g. "c:alice" (client), "cb:alice" (client bandwidth),
--           "bb:node1" (backend bandwidth), "global"
-- ARGV[3]   value "<rate> <burst>" (set only)
-- ARGV[4]   TTL of the hash in ms; refreshed here and by every admitted request
-- Returns 1 if the field changed, 0 otherwise.
-- Expires: the hash, ARGV[4] ms after the last write or admitted request.
local changed
if ARGV[1] == 'set' then
  local old = redis.call('HGET', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  changed = (old ~= ARGV[3]) and 1 or 0
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return changed
