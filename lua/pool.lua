-- pool.lua: a load-balancer pool's shared state: registry, connection leases, statistics.
--
-- All keys share the hash tag {pool:<name>}: one slot, one atomic script per change.
-- KEYS[1]  main hash: version (registry version, bumped on every registry change)
-- KEYS[2]  backends hash: id -> msgpack record {id, address, weight, healthy, metadata,
--          since_us}: since_us is when it joined or last recovered (server us), for slow start
-- KEYS[3]  conns hash: id -> active connections (fleet-wide)
-- KEYS[4]  leases zset: "<id>|<lease>" -> expiry (server us)
-- KEYS[5]  stats hash: "<id>:requests", "<id>:errors", "<id>:latency_ms" (EWMA),
--          "<id>:error_rate" (EWMA)
-- KEYS[6], KEYS[7]  only for "admit": the pool's token buckets (global, then per client;
--          hashes as in bucket.lua); "-" in ARGV skips a limit
-- ARGV[1]  op:
--   "add" <record msgpack> <id>         add a backend (fails if the id exists)
--   "put" <record msgpack> <id>         add or replace (update weight, health, metadata)
--   "remove" <id>                       remove a backend, its counts and stats
--   "acquire" <id> <lease> <ttl_ms>     take a connection slot on a backend
--   "admit" <id> <lease> <ttl_ms> <global "rate burst"|-> <client "rate burst"|->
--                                       the pool's rate limits, then acquire, in one call:
--                                       status "limited:<which> <retry_after_s>" when denied
--                                       (nothing is charged or leased then)
--   "release" <id> <lease> <latency_ms> <failed 0|1> <alpha>   return it, record the outcome
--   "renew" <ttl_ms> <member>...        extend leases ("<id>|<lease>") still held
--   "drop" <id> <lease>                 return a lease without recording an outcome
--   "patch" <id> <changes msgpack>      change fields of a record (health, weight, ...)
--   "snapshot"                          read only
-- ARGV[last] events channel ("" = none), ARGV[last-1] pool name (for events),
-- ARGV[last-2] the registry version the caller holds (records are sent only if it differs)
-- Every op first drops expired leases (a process that died, even by SIGKILL, stops
-- renewing; its connections are given back here) and returns:
--   {status, version, server_us, backends (flat id, JSON record ...; empty when the
--    caller's version is current), conns (flat id, count ...), stats (flat field, value ...;
--    empty for acquire, release and renew), 1 if stats were included else 0}
--   status: "ok", "exists", "unknown"
-- Expires: every key 30 days after the last registry change or snapshot read (a pool in
--   use never expires; an abandoned one goes away); leases live only while renewed.

local main, backends, conns, leases, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op = ARGV[1]
local channel, pool_name, known = ARGV[#ARGV], ARGV[#ARGV - 1], tonumber(ARGV[#ARGV - 2])
local now = now_us()
local status = 'ok'
local POOL_TTL_MS = 30 * 86400 * 1000

local function publish(event, id)
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({kind = 'pool', name = pool_name,
      event = event, backend = id,
      version = tonumber(redis.call('HGET', main, 'version') or '0')}))
  end
end

local function keep_alive()
  for _, k in ipairs({main, backends, conns, stats}) do
    redis.call('PEXPIRE', k, POOL_TTL_MS)
  end
end

local function registry_changed(id, event)
  redis.call('HINCRBY', main, 'version', 1)
  keep_alive()
  publish(event, id)
end

local function give_back(member)
  if redis.call('ZREM', leases, member) == 1 then
    local id = string.match(member, '^(.*)|[^|]*$')
    if tonumber(redis.call('HINCRBY', conns, id, -1)) < 0 then
      redis.call('HSET', conns, id, 0)
    end
  end
end

for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 256)) do
  give_back(m)
end

if op == 'add' or op == 'put' then
  local id = ARGV[3]
  if op == 'add' and redis.call('HEXISTS', backends, id) == 1 then
    status = 'exists'
  else
    local record = cmsgpack.unpack(ARGV[2])
    local old = redis.call('HGET', backends, id)
    record.since_us = old and cmsgpack.unpack(old).since_us or now
    redis.call('HSET', backends, id, cmsgpack.pack(record))
    registry_changed(id, op == 'add' and 'added' or 'updated')
  end
elseif op == 'remove' then
  local id = ARGV[2]
  if redis.call('HDEL', backends, id) == 0 then
    status = 'unknown'
  else
    redis.call('HDEL', conns, id)
    redis.call('HDEL', stats, id .. ':requests', id .. ':errors', id .. ':latency_ms',
      id .. ':error_rate')
    registry_changed(id, 'removed')
  end
elseif op == 'patch' then
  local id = ARGV[2]
  local raw = redis.call('HGET', backends, id)
  if not raw then
    status = 'unknown'
  else
    local record = cmsgpack.unpack(raw)
    local changes = cmsgpack.unpack(ARGV[3])
    if changes.healthy == true and record.healthy == false then record.since_us = now end
    for k, v in pairs(changes) do record[k] = v end
    redis.call('HSET', backends, id, cmsgpack.pack(record))
    registry_changed(id, 'updated')
  end
elseif op == 'acquire' or op == 'admit' then
  local id, lease, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local buckets = {}
  if op == 'admit' then
    for i, spec in ipairs({ARGV[5], ARGV[6]}) do
      local rate, burst = string.match(spec, '^(%S+) (%S+)$')
      if rate then
        rate, burst = tonumber(rate), tonumber(burst)
        local tokens, _, rewrite = bucket_read(KEYS[5 + i], rate, burst, now)
        buckets[#buckets + 1] = {KEYS[5 + i], tokens, rate, burst, rewrite,
          i == 1 and 'pool' or 'client'}
      end
    end
  end
  for _, b in ipairs(buckets) do
    if status == 'ok' and b[2] < 1 then
      status = string.format('limited:%s %s', b[6], fmt(bucket_wait_s(b[2], b[3], b[4], 1)))
    end
  end
  if status ~= 'ok' then
    -- denied by a limit: nothing charged, nothing leased
  elseif redis.call('HEXISTS', backends, id) == 0 then
    status = 'unknown'
  else
    for _, b in ipairs(buckets) do
      bucket_write(b[1], b[2] - 1, b[3], b[4], now, b[5])
    end
    redis.call('ZADD', leases, now + ttl * 1000, id .. '|' .. lease)
    redis.call('HINCRBY', conns, id, 1)
    redis.call('PEXPIRE', leases, POOL_TTL_MS)
  end
elseif op == 'release' then
  local id, lease = ARGV[2], ARGV[3]
  local latency, failed, alpha = tonumber(ARGV[4]), ARGV[5] == '1', tonumber(ARGV[6])
  give_back(id .. '|' .. lease)
  if redis.call('HEXISTS', backends, id) == 1 then
    redis.call('HINCRBY', stats, id .. ':requests', 1)
    if failed then redis.call('HINCRBY', stats, id .. ':errors', 1) end
    local s = redis.call('HMGET', stats, id .. ':latency_ms', id .. ':error_rate')
    local lat = tonumber(s[1])
    local err = tonumber(s[2]) or 0
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
  for i = 3, #ARGV - 3 do
    redis.call('ZADD', leases, 'XX', now + ttl * 1000, ARGV[i])
  end
end

local version = tonumber(redis.call('HGET', main, 'version') or '0')
-- Records go out as JSON (cjson), not msgpack: a client with decode_responses=True
-- would fail to decode binary replies.
local records = {}
if version ~= known then
  local flat = redis.call('HGETALL', backends)
  for i = 1, #flat, 2 do
    records[#records + 1] = flat[i]
    records[#records + 1] = cjson.encode(cmsgpack.unpack(flat[i + 1]))
  end
end
-- Statistics only for reads and registry changes: the hot path (acquire, release,
-- renew) returns connection counts alone, which is what selection needs.
local hot = op == 'acquire' or op == 'admit' or op == 'release' or op == 'renew'
  or op == 'drop'
return {status, version, string.format('%d', now), records, redis.call('HGETALL', conns),
  hot and {} or redis.call('HGETALL', stats), hot and 0 or 1}
