-- elect.lua: one holder of a role at a time (e.g. the pool's health checker).
--
-- KEYS[1]  the role's key (a string: the holder's id)
-- ARGV[1]  candidate id; ARGV[2] lease in ms
-- Returns 1 if the candidate holds the role now (newly or renewed), else 0.
-- Expires: ARGV[2] ms after the holder's last renewal: a dead holder is replaced then.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
