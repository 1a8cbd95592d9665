-- pool.lua: a load-balancer pool's shared state: registry, connection leases, statistics.
--
-- All keys share the hash tag {pool:<name>}: one slot, one atomic script per change.
-- KEYS[1]  main hash: "epoch" (server us when this registry was created) and "version"
--          (bumped on every registry change). The registry's identity is the token
--          "<epoch>.<version>", or "0" when there is no registry: a registry lost and
--          rebuilt with as many changes gets a new epoch, so a token never repeats for a
--          different registry, and an empty registry is a state of its own.
-- KEYS[2]  backends hash: id -> JSON record {"address", "healthy", "metadata", "weight"}
--          written by the client. This script never decodes a record: it stores and
--          returns it as an opaque string, so no stored value can make it fail.
-- KEYS[3]  conns hash: id -> active connections (fleet-wide)
-- KEYS[4]  leases zset: "<id>|<lease>" -> expiry (server us)
-- KEYS[5]  stats hash: "<id>:requests", "<id>:errors", "<id>:latency_ms" (EWMA),
--          "<id>:error_rate" (EWMA)
-- KEYS[6]  since hash: id -> server us when it joined or last recovered (slow start)
-- KEYS[7..11]  only for "admit": the pool's token buckets (global, per client; hashes as
--          in bucket.lua), the priority hash, the bandwidth buckets (per client, per
--          backend); "-" in ARGV skips a limit (see admit_read in _common.lua)
-- ARGV[1]  op:
--   "add" <record JSON> <id>            add a backend (status "exists" if the id exists)
--   "put" <record JSON> <id>            add or replace
--   "remove" <id>                       remove a backend, its counts and stats
--   "patch" <id> <new record JSON> <expected record JSON> <recovered 0|1>
--                                       replace a record only if it still is <expected>
--                                       (compare-and-set; status "conflict" otherwise, and
--                                       the reply then carries the records); recovered=1
--                                       (unhealthy -> healthy) restarts its slow start
--   "acquire" <id> <lease> <ttl_ms>     take a connection slot on a backend
--   "admit" <id> <lease> <ttl_ms> <global "rate burst"|-> <client "rate burst"|->
--           <priority 0..9> <"reserve_per_level starve_us window_us"> <bytes>
--           <client bandwidth "rate burst"|-> <backend bandwidth "rate burst"|->
--                                       the pool's limits (a reserve for higher
--                                       priorities on the global one), then acquire, in
--                                       one call: status "limited:<which> <retry_after_s>"
--                                       when denied (nothing is charged or leased then;
--                                       which: pool, client, client_bandwidth,
--                                       backend_bandwidth); per-level counters either way
--   "release" <id> <lease> <latency_ms> <failed 0|1> <alpha>   return it, record the outcome
--   "renew" <ttl_ms> <member>...        extend leases ("<id>|<lease>") still held
--   "drop" <id> <lease>                 return a lease without recording an outcome
--   "snapshot"                          read only
-- Trailing ARGV, after the op's own: <member>... <n>: n lease members to give back first
-- (leases whose acquire timed out on the client but may have run here: no ghost
-- connections), then the registry token the caller holds ("" = none; records are sent
-- only if it differs), the pool name (for events), the events channel ("" = none).
-- Every op first drops expired leases (a process that died, even by SIGKILL, stops
-- renewing; its connections are given back here) and returns:
--   {status, token, server_us, records (flat id, JSON record, since_us ...), conns (flat
--    id, count ...), stats (flat field, value ...; empty for the hot path), 1 if stats
--    were included else 0, 1 if records were included else 0}
--   status: "ok", "exists", "unknown", "conflict", "limited:..."
-- Values written by hand that are not numbers (conns, stats, version) are reset, never
-- an error; entries that are not valid UTF-8 are left out of replies. Expires: every key 30 days after the last registry change or snapshot read
-- (a pool in use never expires; an abandoned one goes away); every key a call writes gets
-- that TTL in the same call; leases live only while renewed.

local main, backends, conns, leases, stats, since =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local op = ARGV[1]
local channel, pool_name, known = ARGV[#ARGV], ARGV[#ARGV - 1], ARGV[#ARGV - 2]
local n_ghosts = tonumber(ARGV[#ARGV - 3]) or 0
local last_arg = #ARGV - 4 - n_ghosts       -- the op's own arguments end here
local now = now_us()
local status = 'ok'
local POOL_TTL_MS = 30 * 86400 * 1000
local touched = {}
local force_records = false

-- HINCRBY that a hand-written non-integer value cannot break: such a value is reset.
local function incr(key, field, by)
  touched[key] = true
  local n = redis.pcall('HINCRBY', key, field, by)
  if type(n) == 'table' then
    n = math.max(by, 0)
    redis.call('HSET', key, field, n)
  end
  return n
end

-- Whether a string is valid UTF-8 (as Python decodes it: no overlongs, no surrogates).
-- Replies must be: a client with decode_responses=True fails on the whole reply otherwise.
local function utf8_ok(str)
  if not string.find(str, '[\128-\255]') then return true end
  local i, n = 1, #str
  while i <= n do
    local c = string.byte(str, i)
    local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2
      or (c >= 0xE0 and c <= 0xEF) and 3 or (c >= 0xF0 and c <= 0xF4) and 4 or nil
    if not len or i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local cc = string.byte(str, j)
      if cc < 0x80 or cc > 0xBF then return false end
    end
    local c2 = string.byte(str, i + 1)
    if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F)
        or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then
      return false
    end
    i = i + len
  end
  return true
end

-- A flat HGETALL reply without the entries a client could not decode (written by hand).
local function readable(flat, step)
  if not string.find(table.concat(flat), '[\128-\255]') then return flat end
  local out = {}
  for i = 1, #flat, step do
    local ok = true
    for j = i, i + step - 1 do ok = ok and utf8_ok(flat[j]) end
    if ok then
      for j = i, i + step - 1 do out[#out + 1] = flat[j] end
    end
  end
  return out
end

local function token()
  local m = redis.call('HMGET', main, 'epoch', 'version')
  if not m[1] and not m[2] then return '0' end
  local e, v = tonumber(m[1]), tonumber(m[2])
  if not e or not v then return '?' end     -- written by hand; the next change resets it
  return string.format('%d.%d', e, v)
end

local function publish(event, id)
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({kind = 'pool', name = pool_name,
      event = event, backend = id, version = token()}))
  end
end

local function keep_alive()
  for _, k in ipairs({main, backends, conns, leases, stats, since}) do touched[k] = true end
end

local function registry_changed(id, event)
  -- A registry without an epoch (new, or rebuilt after a loss) or with a version that is
  -- not a number starts a new epoch: its tokens can never equal an earlier registry's.
  local v = redis.pcall('HINCRBY', main, 'version', 1)
  if type(v) == 'table' or redis.call('HEXISTS', main, 'epoch') == 0 then
    redis.call('HSET', main, 'epoch', string.format('%d', now), 'version', 1)
  end
  keep_alive()
  publish(event, id)
end

local function give_back(member)
  if redis.call('ZREM', leases, member) == 1 then
    touched[leases] = true
    local id = string.match(member, '^(.*)|[^|]*$')
    if id and incr(conns, id, -1) < 0 then
      redis.call('HSET', conns, id, 0)
    end
  end
end

for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 256)) do
  give_back(m)
end
for i = last_arg + 1, last_arg + n_ghosts do
  give_back(ARGV[i])
end

if op == 'add' or op == 'put' then
  local id = ARGV[3]
  if op == 'add' and redis.call('HEXISTS', backends, id) == 1 then
    status = 'exists'
  else
    redis.call('HSET', backends, id, ARGV[2])
    if op == 'add' then
      redis.call('HSET', since, id, string.format('%d', now))
    else
      redis.call('HSETNX', since, id, string.format('%d', now))
    end
    registry_changed(id, op == 'add' and 'added' or 'updated')
  end
elseif op == 'remove' then
  local id = ARGV[2]
  if redis.call('HDEL', backends, id) == 0 then
    status = 'unknown'
  else
    redis.call('HDEL', conns, id)
    redis.call('HDEL', since, id)
    redis.call('HDEL', stats, id .. ':requests', id .. ':errors', id .. ':latency_ms',
      id .. ':error_rate')
    registry_changed(id, 'removed')
  end
elseif op == 'patch' then
  local id = ARGV[2]
  local raw = redis.call('HGET', backends, id)
  if not raw then
    status = 'unknown'
  elseif raw ~= ARGV[4] then
    status = 'conflict'
    force_records = true
  else
    redis.call('HSET', backends, id, ARGV[3])
    if ARGV[5] == '1' or redis.call('HEXISTS', since, id) == 0 then
      redis.call('HSET', since, id, string.format('%d', now))
    end
    registry_changed(id, 'updated')
  end
elseif op == 'acquire' or op == 'admit' then
  local id, lease, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local adm = nil
  if op == 'admit' then            -- limits, priority, bandwidth: _common.lua admit_read
    adm = admit_read(now)
    status = adm.status
  end
  if status ~= 'ok' then
    -- denied by a limit: nothing charged, nothing leased
  elseif redis.call('HEXISTS', backends, id) == 0 then
    status = 'unknown'
  else
    if adm then admit_charge(adm, now) end
    redis.call('ZADD', leases, now + ttl * 1000, id .. '|' .. lease)
    touched[leases] = true
    incr(conns, id, 1)
  end
  if adm then
    admit_count(adm, now)
    touched[KEYS[9]] = true
  end
elseif op == 'release' then
  local id, lease = ARGV[2], ARGV[3]
  local latency, failed, alpha = tonumber(ARGV[4]), ARGV[5] == '1', tonumber(ARGV[6])
  give_back(id .. '|' .. lease)
  if redis.call('HEXISTS', backends, id) == 1 then
    incr(stats, id .. ':requests', 1)
    if failed then incr(stats, id .. ':errors', 1) end
    local s = redis.call('HMGET', stats, id .. ':latency_ms', id .. ':error_rate')
    local lat = tonumber(s[1])
    local err = tonumber(s[2])
    -- a hand-written value that is not a finite number starts the average afresh
    if lat and (lat ~= lat or lat == math.huge or lat == -math.huge) then lat = nil end
    if not err or err ~= err or err == math.huge or err == -math.huge then err = 0 end
    lat = lat and (lat * (1 - alpha) + latency * alpha) or latency
    err = err * (1 - alpha) + (failed and 1 or 0) * alpha
    redis.call('HSET', stats, id .. ':latency_ms', fmt(lat), id .. ':error_rate', fmt(err))
  end
elseif op == 'snapshot' then
  -- Every process reads a snapshot about once per refresh interval: a pool in use
  -- never expires, an abandoned one goes POOL_TTL_MS after its last reader.
  keep_alive()
elseif op == 'drop' then
  give_back(ARGV[2] .. '|' .. ARGV[3])
elseif op == 'renew' then
  local ttl = tonumber(ARGV[2])
  for i = 3, last_arg do
    redis.call('ZADD', leases, 'XX', now + ttl * 1000, ARGV[i])
  end
  touched[leases] = true
end

-- Every key this call wrote (or a read keeps alive) gets its TTL now, not at some later
-- call: a short-lived process leaves nothing behind forever. pcall: a key this call
-- emptied (the last lease given back) is gone, and while its cluster slot is being
-- migrated away the server refuses to touch a missing key ("non local key"); a
-- missing key needs no TTL.
for k in pairs(touched) do
  redis.pcall('PEXPIRE', k, POOL_TTL_MS)
end

local current = token()
local records = {}
local sent = 0
if current ~= known or force_records then
  sent = 1
  local flat = redis.call('HGETALL', backends)
  for i = 1, #flat, 2 do
    records[#records + 1] = flat[i]
    records[#records + 1] = flat[i + 1]
    records[#records + 1] = redis.call('HGET', since, flat[i]) or '0'
  end
  records = readable(records, 3)
end
-- Statistics only for reads and registry changes: the hot path (acquire, release,
-- renew) returns connection counts alone, which is what selection needs.
local hot = op == 'acquire' or op == 'admit' or op == 'release' or op == 'renew'
  or op == 'drop'
return {status, current, string.format('%d', now), records,
  readable(redis.call('HGETALL', conns), 2),
  hot and {} or readable(redis.call('HGETALL', stats), 2), hot and 0 or 1, sent}
