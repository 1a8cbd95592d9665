-- poolconfig.lua: a load-balancer pool's fleet-wide configuration (limits, breaker
-- settings, strategy parameters), versioned, changed by compare-and-set.
--
-- KEYS[1]  config hash {pool:<name>}:config, readable in redis-cli:
--            "version"        changes so far (1 after the first write); the compare-and-set
--                             token. A value that is not a whole number reads as 0.
--            "rate_limit", "client_limit"   "<rate per s> <burst>", or "none" (no limit)
--            "breaker.<field>"  a BreakerSettings number (e.g. breaker.failure_threshold)
--            "strategy.<attr>"  a parameter the strategy declares (config_params; e.g. strategy.vnodes)
--            "updated_by", "updated_at_us"  who wrote last, and when (server clock, us)
--          The script stores values as the client wrote them and never interprets
--          them: the client validates before writing and after reading. Entries that
--          are not valid UTF-8 (written by hand) are left out of replies.
-- KEYS[2]  history zset {pool:<name>}:config:history, at most ARGV[4] entries: member JSON
--          {"version", "by", "at_us", "set": {field: value}, "unset": [field...],
--          "previous": {field: old value or null (was not stored)}}, score the write's
--          server time (us). ("at_us" is a string: cjson would round 16 digits; entries
--          written before this change say false for null: readers take both.)
--          (A zset, not a list: the commands stay within the README's minimal ACL.)
-- ARGV[1]  op:
--   "get" <known token> <ttl_ms>
--        Reply {version, 1, field, value, ...} (the whole hash) when the stored token
--        "<version>:<updated_at_us>" differs from <known token> ("" = none known), else
--        {version, 0}. (The write time in the token: a hash lost and rewritten up to the
--        same version is still a change.)
--        {"wrongtype"} when KEYS[1] is not a hash or KEYS[2] not a zset (written by
--        hand): nothing is read or written.
--   "set" <expected version|""> <ttl_ms> <history max> <by> <pool name> <channel>
--         <n> <field> <value> ... (n pairs) <field to remove> ...
--        Writes only if the stored version equals <expected version> ("": whatever it
--        is). Reply {"ok", new version, field, value, ...} or {"conflict", version,
--        field, value, ...} (nothing written), or {"unchanged", version, field, value,
--        ...} when n = 0 and no field to remove is stored (nothing to do: no new version,
--        no history entry, no event), or {"wrongtype"}. A write bumps
--        "version", records who/when, pushes a history entry (trimmed to the bound) and
--        publishes {"kind": "pool", "name", "event": "config", "config_version", "by",
--        "fields": [field set or removed, ...]} on <channel> ("" = none) so every process
--        re-reads it at once.
--   "history" <unused> <ttl_ms> <n>
--        Reply: the newest <n> history entries (JSON strings), newest first.
-- Expires: both keys ARGV[3] ms (30 days) after the last write or read; a pool in use
-- never loses its configuration, an abandoned one goes away with its other keys.

local cfg, hist = KEYS[1], KEYS[2]
local op = ARGV[1]
local ttl_ms = tonumber(ARGV[3])

-- Keys of another type (written by hand) are reported, never an error halfway through.
local stored_version = redis.pcall('HGET', cfg, 'version')
local hist_size = redis.pcall('ZCARD', hist)
if type(stored_version) == 'table' or type(hist_size) == 'table' then
  return {'wrongtype'}
end

local function version()
  local v = tonumber(stored_version)
  if v == nil or v ~= v or v < 0 or v ~= math.floor(v) or v >= 2^53 then return 0 end
  return v
end

local function keep()
  if redis.call('EXISTS', cfg) == 1 then redis.call('PEXPIRE', cfg, ttl_ms) end
  if redis.call('EXISTS', hist) == 1 then redis.call('PEXPIRE', hist, ttl_ms) end
end

local function whole(v, status)
  local out = {status, string.format('%d', v)}
  if status == nil then out = {string.format('%d', v), 1} end
  local flat = redis.call('HGETALL', cfg)
  for i = 1, #flat, 2 do
    if utf8_ok(flat[i]) and utf8_ok(flat[i + 1]) then
      out[#out + 1] = flat[i]
      out[#out + 1] = flat[i + 1]
    end
  end
  return out
end

local v = version()

if op == 'get' then
  keep()
  local at = redis.call('HGET', cfg, 'updated_at_us') or ''
  if ARGV[2] ~= '' and ARGV[2] == string.format('%d', v) .. ':' .. at then
    return {string.format('%d', v), 0}
  end
  return whole(v)
end

if op == 'history' then
  keep()
  local oldest_first = redis.call('ZRANGE', hist, -tonumber(ARGV[4]), -1)
  local out = {}
  for j = #oldest_first, 1, -1 do out[#out + 1] = oldest_first[j] end
  return out
end

-- op == 'set'
if ARGV[2] ~= '' and ARGV[2] ~= string.format('%d', v) then
  keep()
  return whole(v, 'conflict')
end
local max_hist, by, pool_name, channel = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local n = tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local set, previous, unset, fields = {}, {}, {}, {}
local i = 9
if n == 0 then
  local any_stored = false
  for j = i, #ARGV do
    if redis.call('HEXISTS', cfg, ARGV[j]) == 1 then any_stored = true end
  end
  if not any_stored then
    keep()
    return whole(v, 'unchanged')
  end
end
for _ = 1, n do
  local f, val = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', cfg, f)
  previous[f] = old and (utf8_ok(old) and old or '<not UTF-8>') or cjson.null
  set[f] = val
  fields[#fields + 1] = f
  redis.call('HSET', cfg, f, val)
  i = i + 2
end
for j = i, #ARGV do
  local f = ARGV[j]
  local old = redis.call('HGET', cfg, f)
  previous[f] = old and (utf8_ok(old) and old or '<not UTF-8>') or cjson.null
  unset[#unset + 1] = f
  fields[#fields + 1] = f
  redis.call('HDEL', cfg, f)
end
v = v + 1
local at = string.format('%d', now)
redis.call('HSET', cfg, 'version', string.format('%d', v), 'updated_by', by,
           'updated_at_us', at)
local entry = {version = v, by = by, at_us = at, set = set, previous = previous}
if #unset > 0 then entry.unset = unset end
redis.call('ZADD', hist, now, cjson.encode(entry))
local extra = hist_size + 1 - max_hist
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', hist, 0, extra - 1)) do
    redis.call('ZREM', hist, old)
  end
end
keep()
if channel ~= '' then
  redis.call('PUBLISH', channel, cjson.encode({kind = 'pool', name = pool_name,
    event = 'config', config_version = v, by = by, fields = fields}))
end
return whole(v, 'ok')
