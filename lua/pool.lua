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
-- KEYS[3]  conns hash: id -> active connections (fleet-wide); a field per backend from
--          its "add" on (0 when idle)
-- KEYS[4]  leases zset: "<id>|<lease>" -> expiry (server us), and the member "~keep"
--          (score +inf, never a lease) that keeps the zset, and its TTL, while leases
--          come and go
-- KEYS[5]  stats hash: "<id>:requests", "<id>:errors", "<id>:latency_ms" (EWMA),
--          "<id>:error_rate" (EWMA)
-- KEYS[6]  since hash: id -> server us when it joined or last recovered (slow start)
-- KEYS[7..11]  only for "admit": the pool's token buckets (global, per client; hashes as
--          in bucket.lua), the priority hash, the bandwidth buckets (per client, per
--          backend); "-" in ARGV skips a limit (see admit_read in _common.lua)
-- ARGV[1]  op:
--   "add" <record JSON> <id> <name> <channel>   add a backend (status "exists" if the id
--                                       exists); <name> (the pool's) and <channel> (""
--                                       = none) are for the event every registry change
--                                       publishes
--   "put" <record JSON> <id> <name> <channel>   add or replace
--   "remove" <id> <name> <channel>      remove a backend, its counts, leases and stats
--   "patch" <id> <new record JSON> <expected record JSON> <recovered 0|1> <name> <channel>
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
--                                       (<lease> "": record only)
--   "renew" <ttl_ms> <member>...        extend leases ("<id>|<lease>") still held
--   "drop" <id> <lease>                 return a lease without recording an outcome
--   "snapshot"                          read (and keep the pool's keys alive)
--   "flush"                             nothing of its own: only the trailing work below
-- Trailing ARGV, after the op's own: first <id> <lease> <latency_ms> <failed> <alpha> x r,
-- then r: deferred releases, each exactly a "release" (done before the op); then
-- <member>... <n>: n lease members to give back first (leases whose acquire timed out on
-- the client but may have run here: no ghost connections); last the registry token the
-- caller holds ("" = none; records are sent only if it differs).
-- Expired leases (a process that died, even by SIGKILL, stops renewing) are given back
-- by "snapshot" and "renew", not by the hot ops: every process snapshots at least every
-- refresh_s and renews every ttl/3 while it holds leases, so a dead process's
-- connections return within its lease TTL plus the fleet's refresh_s.
-- The hot ops are cheap on purpose (admit 5 commands: TIME, HMGET, ZADD, HINCRBY,
-- HGETALL; release 5: ZREM, HINCRBY, HMGET, HSET, HGETALL): "acquire"/"admit" trust the
-- caller's token (the registry it selected from is still current, so the backend
-- exists) and check HEXISTS only when it is stale; "release" trusts its lease (a lease
-- held proves the backend exists: "remove" drops a backend's leases) and reads neither
-- the clock nor the token.
-- Returns, for the hot ops when no records are due (small, for a fast client parse):
--   {"<token> <server_us> <status>", "<id> <count> <id> <count> ..." (the counts that are
--    not 0, one string; "" for none)}, or with the counts as a flat array (id, count ...)
--    when an id holds whitespace
-- else {status, token, server_us, records (flat id, JSON record, since_us ...), conns
--    (as above), stats (flat field, value ...; empty for acquire, admit, renew), 1 if stats
--    were included else 0, 1 if records were included else 0}
--   status: "ok", "exists", "unknown", "conflict", "limited:..."
--   token "" and server_us "0" when the op did not read them (release, drop, flush)
-- Values written by hand that are not numbers (conns, stats, version) are reset, never
-- an error; entries that are not valid UTF-8 are left out of replies. A key of the wrong
-- type (KEYS[1..6]) is reset and the call runs again, once (see the end of this file).
-- Expires: every key 30 days after the last registry change or snapshot read (a pool in
-- use never expires; an abandoned one goes away). Keys are created with their TTL: the
-- registry change that adds a backend creates its conns field and the leases zset (with
-- "~keep"), a release that creates the stats hash sets its TTL; the hot ops write only
-- into keys that exist already. Leases live only while renewed.

-- The whole call, as a function: run again once if a pool key had the wrong type.
local function run()
  local main, backends, conns, leases, stats, since =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
  local op = ARGV[1]
  local known = ARGV[#ARGV]
  local n_ghosts = tonumber(ARGV[#ARGV - 1]) or 0
  local ghosts_from = #ARGV - 1 - n_ghosts    -- the first ghost member
  local n_rel = tonumber(ARGV[ghosts_from - 1]) or 0
  local rel_from = ghosts_from - 1 - 5 * n_rel  -- the first deferred release
  local last_arg = rel_from - 1               -- the op's own arguments end here
  local now = nil                             -- server us, read only by the ops that need it
  local status = 'ok'
  local POOL_TTL_MS = 30 * 86400 * 1000
  local cur = nil                             -- the registry token, read once

  -- The hot ops (acquire, admit, release, drop, flush) come first and return early: they
  -- create only the closures they use (each costs server time on every call).

  local function token()
    if cur == nil then
      local m = redis.call('HMGET', main, 'epoch', 'version')
      local e, v = tonumber(m[1]), tonumber(m[2])
      if not m[1] and not m[2] then
        cur = '0'
      elseif not e or not v then
        cur = '?'                  -- written by hand; the next change resets it
      else
        cur = string.format('%d.%d', e, v)
      end
    end
    return cur
  end

  -- HINCRBY that a hand-written non-integer value cannot break: such a value is reset.
  local function incr(key, field, by)
    local n = redis.pcall('HINCRBY', key, field, by)
    if type(n) == 'table' then
      n = math.max(by, 0)
      redis.call('HSET', key, field, n)
    end
    return n
  end

  local function give_back(member)
    if redis.call('ZREM', leases, member) == 1 then
      local id = string.match(member, '^(.*)|[^|]*$')
      if id and incr(conns, id, -1) < 0 then
        redis.call('HSET', conns, id, 0)
      end
      return true
    end
    return false
  end

  -- Return a lease (if any) and record the call's outcome: one HMGET and one HSET. A count
  -- or an average stored by hand that is not a number (or not whole, or not finite)
  -- starts afresh.
  local function release(id, lease, latency, failed, alpha)
    local held = lease ~= '' and give_back(id .. '|' .. lease)
    if not held and redis.call('HEXISTS', backends, id) == 0 then return end
    local f_req, f_err, f_lat, f_rate = id .. ':requests', id .. ':errors',
      id .. ':latency_ms', id .. ':error_rate'
    local s = redis.call('HMGET', stats, f_req, f_err, f_lat, f_rate)
    local req, errs, lat, err = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
    if not req or req ~= req or req < 0 or req >= 2^53 or req ~= math.floor(req) then req = 0 end
    if not lat or lat ~= lat or lat == math.huge or lat == -math.huge then
      lat = latency
    else
      lat = lat * (1 - alpha) + latency * alpha
    end
    if not err or err ~= err or err == math.huge or err == -math.huge then err = 0 end
    err = err * (1 - alpha) + (failed and alpha or 0)
    -- Numbers go to the server as numbers: it writes them exactly (see _common.lua).
    if failed then
      if not errs or errs ~= errs or errs < 0 or errs >= 2^53 or errs ~= math.floor(errs) then
        errs = 0
      end
      redis.call('HSET', stats, f_req, req + 1, f_err, errs + 1, f_lat, lat, f_rate, err)
    else
      redis.call('HSET', stats, f_req, req + 1, f_lat, lat, f_rate, err)
    end
    -- The first request of a backend may have created the hash: give it its TTL.
    if not s[1] then redis.call('PEXPIRE', stats, POOL_TTL_MS) end
  end

  for i = rel_from, ghosts_from - 2, 5 do
    release(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3] == '1',
      tonumber(ARGV[i + 4]))
  end
  for i = ghosts_from, ghosts_from + n_ghosts - 1 do
    give_back(ARGV[i])
  end

  local hot = true
  if op == 'acquire' or op == 'admit' then
    local id, lease, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
    now = now_us()
    local adm = nil
    if op == 'admit' then            -- limits, priority, bandwidth: _common.lua admit_read
      adm = admit_read(now)
      status = adm.status
    end
    if status ~= 'ok' then
      -- denied by a limit: nothing charged, nothing leased
    elseif (known == '' or known == '?' or token() ~= known)
        and redis.call('HEXISTS', backends, id) == 0 then
      -- The caller's registry is current: it selected the backend from it, so the backend
      -- exists. Otherwise look.
      status = 'unknown'
    else
      -- The zset ("~keep") and the conns hash exist already, with their TTLs. The lease
      -- first, then its count (only for a new member), then the charge: a run that failed
      -- on a key of the wrong type and runs again (see the end) counts and charges once.
      if redis.call('ZADD', leases, now + ttl * 1000, id .. '|' .. lease) == 1 then
        incr(conns, id, 1)
      end
      if adm then admit_charge(adm, now) end
    end
    if adm then admit_count(adm, now, POOL_TTL_MS) end
  elseif op == 'release' then
    release(ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1', tonumber(ARGV[6]))
  elseif op == 'drop' then
    give_back(ARGV[2] .. '|' .. ARGV[3])
  elseif op ~= 'flush' then
    hot = false
  end

  -- Connection counts that are not 0 (a missing one is 0): what selection needs.
  local function counts()
    local all, out = redis.call('HGETALL', conns), {}
    for i = 1, #all, 2 do
      if all[i + 1] ~= '0' then
        out[#out + 1] = all[i]
        out[#out + 1] = all[i + 1]
      end
    end
    return out
  end

  -- Release, drop and flush read neither the token nor the clock: they return no records.
  local reads = not hot or op == 'acquire' or op == 'admit'
  local busy = nil
  if hot then
    busy = counts()
    local joined = table.concat(busy)
    if (not reads or token() == known) and not string.find(joined, '[\128-\255]') then
      local head = string.format('%s %d %s', reads and cur or '', now or 0, status)
      if string.find(joined, '%s') then
        return {head, busy}
      end
      -- One bulk string, not 2 per backend: a client parses one reply element, not many.
      return {head, table.concat(busy, ' ')}
    end
  end

  -- The cold path: registry changes, snapshot, renew; or a hot op whose caller's registry
  -- is stale (the reply carries the records), or a reply to clean of hand-written bytes.

  local channel, pool_name = ARGV[last_arg], ARGV[last_arg - 1]
  local KEEP = '~keep'
  local force_records = false

  local function clock()
    if now == nil then now = now_us() end
    return now
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

  local function publish(event, id)
    if channel ~= '' then
      redis.call('PUBLISH', channel, cjson.encode({kind = 'pool', name = pool_name,
        event = event, backend = id, version = token()}))
    end
  end

  -- Every key gets (again) its TTL; the leases zset is kept by "~keep" while the registry
  -- exists, so the hot ops never create it (nor need a PEXPIRE). pcall: a missing key
  -- needs no TTL, and while its cluster slot is being migrated away the server refuses to
  -- touch a missing key ("non local key").
  local function keep_alive()
    if token() ~= '0' then redis.call('ZADD', leases, '+inf', KEEP) end
    for _, k in ipairs({main, backends, conns, leases, stats, since}) do
      redis.pcall('PEXPIRE', k, POOL_TTL_MS)
    end
  end

  local function registry_changed(id, event)
    -- A registry without an epoch (new, or rebuilt after a loss) or with a version that is
    -- not a number starts a new epoch: its tokens can never equal an earlier registry's.
    local v = redis.pcall('HINCRBY', main, 'version', 1)
    if type(v) == 'table' or redis.call('HEXISTS', main, 'epoch') == 0 then
      redis.call('HSET', main, 'epoch', string.format('%d', clock()), 'version', 1)
    end
    cur = nil
    keep_alive()
    publish(event, id)
  end

  if not hot then
    -- Leases whose process stopped renewing them (it died, even by SIGKILL) go back here:
    -- every process snapshots at least every refresh_s, and renews while it holds leases.
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', clock(), 'LIMIT', 0, 256)) do
      give_back(m)
    end
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
      redis.call('HSETNX', conns, id, 0)      -- conns exists (with its TTL) before any lease
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
      -- Its leases go too: a lease held then proves its backend exists (see release).
      local prefix = id .. '|'
      for _, m in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
        if string.sub(m, 1, #prefix) == prefix and not string.find(m, '|', #prefix + 1, true)
        then
          redis.call('ZREM', leases, m)
        end
      end
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
  elseif op == 'snapshot' then
    -- Every process reads a snapshot about once per refresh interval: a pool in use
    -- never expires, an abandoned one goes POOL_TTL_MS after its last reader.
    keep_alive()
  elseif op == 'renew' then
    local ttl = tonumber(ARGV[2])
    local args = {'ZADD', leases, 'XX'}
    for i = 3, last_arg do
      args[#args + 1] = now + ttl * 1000
      args[#args + 1] = ARGV[i]
    end
    if #args > 3 then redis.call(unpack(args)) end
  end

  local current = reads and token() or ''
  local records = {}
  local sent = 0
  if reads and (current ~= known or force_records) then
    sent = 1
    local flat = redis.call('HGETALL', backends)
    local joined = {}
    local s = redis.call('HGETALL', since)
    for i = 1, #s, 2 do joined[s[i]] = s[i + 1] end
    for i = 1, #flat, 2 do
      records[#records + 1] = flat[i]
      records[#records + 1] = flat[i + 1]
      records[#records + 1] = joined[flat[i]] or '0'
    end
    records = readable(records, 3)
  end
  if not hot then busy = counts() end
  -- Statistics only for reads and registry changes: acquire, admit, release, renew return
  -- connection counts alone, which is what selection needs.
  local counts_only = hot or op == 'renew'
  return {status, current, now and string.format('%d', now) or '0', records,
    readable(busy, 2), counts_only and {} or readable(redis.call('HGETALL', stats), 2),
    counts_only and 0 or 1, sent}
end

-- A key of the wrong type under this pool's name (planted by hand, or written by
-- something else) would fail every call until it expires, if it ever does. Then that
-- key is reset (logged in the server log) and the call runs again, once: a lost main
-- hash or registry starts a new epoch (no token repeats: every process re-reads the
-- records), a lost leases zset gets "~keep" back, and the conns hash is rebuilt from the
-- leases held (so no count drifts). The checks use only commands of the README's
-- minimal ACL. Any other error is raised as it is. This costs no command on the normal
-- path.
local ok, reply = pcall(run)
if ok then return reply end
local bad, is_bad = {}, {}
for i, kind in ipairs({'hash', 'hash', 'hash', 'zset', 'hash', 'hash'}) do
  -- A WRONGTYPE error: the key has the wrong type (HEXISTS's field name is any); any
  -- other error (e.g. a key of a slot being migrated) is not ours to reset.
  local r = kind == 'zset' and redis.pcall('ZCARD', KEYS[i])
    or redis.pcall('HEXISTS', KEYS[i], 'x')
  if type(r) == 'table' and r.err and string.find(tostring(r.err), 'WRONGTYPE', 1, true) then
    bad[#bad + 1] = KEYS[i]
    is_bad[i] = true
    redis.call('DEL', KEYS[i])
  end
end
if #bad == 0 then error(reply, 0) end
local TTL_MS = 30 * 86400 * 1000
if is_bad[1] or is_bad[2] then   -- a new epoch: tokens never equal an earlier registry's
  redis.call('HSET', KEYS[1], 'epoch', string.format('%d', now_us()), 'version', 1)
  redis.call('PEXPIRE', KEYS[1], TTL_MS)
end
if is_bad[4] and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[4], '+inf', '~keep')
  redis.call('PEXPIRE', KEYS[4], TTL_MS)
end
if is_bad[3] or is_bad[4] then   -- the connection counts, from the leases held
  local n = {}
  local flat = redis.call('HGETALL', KEYS[2])
  for i = 1, #flat, 2 do n[flat[i]] = 0 end
  for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local id = string.match(m, '^(.*)|[^|]*$')
    if id and n[id] then n[id] = n[id] + 1 end
  end
  redis.call('DEL', KEYS[3])
  for id, c in pairs(n) do redis.call('HSET', KEYS[3], id, c) end
  redis.pcall('PEXPIRE', KEYS[3], TTL_MS)
end
redis.log(redis.LOG_WARNING, 'distlb: pool ' .. string.match(KEYS[1], '{pool:(.*)}')
  .. ' reset: wrong type at ' .. table.concat(bad, ' '))
return run()
