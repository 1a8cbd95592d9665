-- delete.lua: remove an entity's keys (reset to the initial state).
--
-- KEYS[1..n]  every key of the entity (a missing bucket reads as full)
-- ARGV        none
-- Returns the number of keys that existed.
return redis.call('DEL', unpack(KEYS))
