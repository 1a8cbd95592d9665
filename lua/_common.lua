-- _common.lua: helpers shared by every distlb script.
--
-- distlb/_scripts.py prepends the helpers a script uses to it before loading it, so
-- the token-bucket arithmetic exists once. It defines locals only and touches no keys.
-- Blocks are separated by a blank line (keep none inside a block): a block is prepended
-- when the script, or another prepended block, names a local it defines. Each helper
-- is a closure created on every call of the script, hence only the used ones.

-- The server clock in integer microseconds. ~1.8e15 today, far below 2^53, so
-- a Lua double holds it exactly and differences between two readings are exact.
-- Every process and host uses this clock: client clocks never reach state.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Numbers handed to redis.call are written by the server, in C and round-trip exact:
-- "%.17g" up to Redis 7.0, the shortest exact form since Redis 7.2 / Valkey (integers
-- plainly, 100/3 as "33.333333333333336"), fakeredis "%.17g". That is the cheap way to
-- store a number: no string.format in Lua. (Only Lua's own tostring and ".." use "%.14g",
-- which loses precision: never build a stored value or a reply number with them.)
-- Replies cannot carry fractions as numbers (they are truncated to integers), so they
-- are formatted here: "%.17g" (round-trip exact) inside one string.format per reply
-- line on the hot paths; fmt below where the value is meant to be read by people.

-- x as the shortest of 15 and 17 significant digits that reads back as the same double,
-- so round values stay plain ("10", "0.5"). Costs two or three C calls: keep it off the
-- hot path (it is for rarely written settings and rarely sent figures).
local function fmt(x)
  if x == math.huge then return 'inf' end
  if x == -math.huge then return '-inf' end
  if x ~= x then return 'nan' end
  local s = string.format('%.15g', x)
  if tonumber(s) ~= x then s = string.format('%.17g', x) end
  return s
end

-- A number as a string for building a field name or a reply ("%d"; tostring would
-- write integers >= 1e14 as "1e+14"). Command arguments need no int(): pass the number.
local function int(x)
  return string.format('%d', x)
end

-- A TTL for PEXPIRE, in ms: a whole number of at least 1 ms and at most ~31 years,
-- whatever the arithmetic gave (NaN, inf, a huge refill time). The clients validate
-- ranges so that this never bites; it is here so that no script can fail in PEXPIRE
-- after it wrote, leaving a key without a TTL. A number: redis.call writes it exactly.
local MAX_TTL_MS = 1e12
local function ttl(ms)
  if ms ~= ms or ms > MAX_TTL_MS then return MAX_TTL_MS end
  if ms < 1 then return 1 end
  return math.ceil(ms)
end

-- A stored number, or nil when missing or not a finite number (such a value can
-- only come from outside distlb; reading it as missing keeps the key usable).
local function finite(v)
  local x = tonumber(v)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return nil end
  return x
end

-- Token bucket state at `now`: refilled since its last write, capped at burst.
-- A missing hash is a full bucket; that is why keys may expire once full.
-- rate_s and burst_s (optional) are rate and burst as the caller spelled them: a stored
-- setting spelled alike is equal without converting it (the common case); one spelled
-- otherwise is compared by value ("10" and "10.0" are the same setting).
-- Returns tokens, whether the stored rate/burst differ from the given ones, whether
-- rate/burst must be (re)written on the next write, and the stored exp_us (or nil).
-- bucket.lua has the same arithmetic inline (its hot path creates no closures): keep
-- the two in step.
local function bucket_read(key, rate, burst, now, rate_s, burst_s)
  local s = redis.call('HMGET', key, 'tokens', 'ts_us', 'rate', 'burst', 'exp_us')
  local tokens = finite(s[1])
  local ts = finite(s[2])
  if tokens == nil or ts == nil then
    return burst, false, true, nil
  end
  -- A failover to a replica with a slower clock must not mint tokens from a
  -- negative interval, hence elapsed > 0.
  local elapsed = now - ts
  if elapsed > 0 then tokens = tokens + elapsed * rate / 1000000 end
  if tokens > burst then tokens = burst end
  local differs = (s[3] ~= rate_s and tonumber(s[3]) ~= rate)
    or (s[4] ~= burst_s and tonumber(s[4]) ~= burst)
  return tokens, differs, differs, finite(s[5])
end

-- Store a bucket and keep it until it would be full again (+1 s): an expired bucket
-- reads as full, so expiry loses nothing and abandoned buckets cost no memory.
-- The TTL is set with room (the longest refill, burst / rate, + 2 s) and the hash
-- remembers it in exp_us (server us, a little before the key's real expiry), so most
-- writes need no PEXPIRE: only one that would outlive exp_us sets a new TTL. An exp_us
-- that is not a number, or farther than the longest TTL, is not trusted.
-- rate and burst are stored for people (redis-cli, distlb inspect) and for conflict
-- detection; they are rewritten only when they change. Numbers go to redis.call as
-- numbers (written exactly by the server); rate_s/burst_s, when given, are stored as
-- spelled by the caller, so that the next bucket_read compares strings.
local function bucket_write(key, tokens, rate, burst, now, with_config, rate_s, burst_s, exp)
  local keep = exp ~= nil and exp <= now + MAX_TTL_MS * 1000
    and exp >= now + (burst - tokens) / rate * 1000000 + 1000000
  local ms = nil
  if not keep then ms = ttl(burst / rate * 1000 + 2000) end
  if with_config then
    if keep then
      redis.call('HSET', key, 'tokens', tokens, 'ts_us', now, 'rate', rate_s or rate,
        'burst', burst_s or burst)
    else
      redis.call('HSET', key, 'tokens', tokens, 'ts_us', now, 'rate', rate_s or rate,
        'burst', burst_s or burst, 'exp_us', now + (ms - 1) * 1000)
    end
  elseif keep then
    redis.call('HSET', key, 'tokens', tokens, 'ts_us', now)
  else
    redis.call('HSET', key, 'tokens', tokens, 'ts_us', now, 'exp_us', now + (ms - 1) * 1000)
  end
  if not keep then redis.call('PEXPIRE', key, ms) end
end

-- Seconds until `cost` tokens are available (inf when cost exceeds burst).
local function bucket_wait_s(tokens, rate, burst, cost)
  if cost > burst then return math.huge end
  if tokens >= cost then return 0 end
  return (cost - tokens) / rate
end

-- Request priority, the one rule for a pool's admission (admit_read below) and a traffic
-- shaper (bucket.lua); distlb/_core/admission.py states it for people. A priority hash
-- (key): top, top_us (the highest level that asked within window us, and when); per
-- level p: p:last_us (its last admission, server us), counters p:admitted, p:denied,
-- p:shed (denied by the reserve alone: the bucket had the cost, not the reserve).
-- prio_read: one HMGET; level_s the level ("0".."9"), policy "<reserve per level>
-- <starve us> <window us>". A level not admitted for starve us (0 = never) asks without
-- reserve (aging: no level starves). prio_need: the tokens a request of cost must find
-- in a bucket of burst at this level (the cost plus the reserve held for higher levels,
-- never more than the burst). prio_count: an admitted call costs the hash one HSET (the
-- admitted count rides along), a denied one an HINCRBY or two; a hash created by this
-- call gets its TTL (ttl_ms), a hot one none.
local function prio_read(key, level_s, policy, now)
  local level = math.floor(tonumber(level_s) or 0)
  local lv = string.format('%d', level)
  local per_level, starve, window = string.match(policy, '^(%S+) (%S+) (%S+)$')
  per_level, starve, window = tonumber(per_level), tonumber(starve), tonumber(window)
  local s = redis.call('HMGET', key, 'top', 'top_us', lv .. ':last_us', lv .. ':admitted')
  local p = {key = key, lv = lv, per_level = per_level}
  p.fresh = not s[1] and not s[2]     -- no hash yet: prio_count gives it its TTL
  local top, top_us = finite(s[1]), finite(s[2])
  if not top or not top_us or now - top_us > window then top = -1 end
  p.raise_top = level >= top
  local n = tonumber(s[4])
  p.admitted = (n and n >= 0 and n == math.floor(n)) and n or 0
  local gap = top - level
  if gap < 0 or (starve > 0 and now - (finite(s[3]) or 0) > starve) then gap = 0 end
  p.gap = gap
  return p
end
local function prio_need(p, cost, burst)
  return cost + math.min(p.per_level * p.gap * burst, math.max(burst - cost, 0))
end
local function prio_count(p, admitted, limited, shed, now, ttl_ms)
  local key, lv = p.key, p.lv
  if admitted then
    if p.raise_top then
      redis.call('HSET', key, lv .. ':last_us', now, lv .. ':admitted', p.admitted + 1,
        'top', lv, 'top_us', now)
    else
      redis.call('HSET', key, lv .. ':last_us', now, lv .. ':admitted', p.admitted + 1)
    end
  else
    if limited then
      for _, field in ipairs({lv .. ':denied', shed and lv .. ':shed' or nil}) do
        if type(redis.pcall('HINCRBY', key, field, 1)) == 'table' then
          redis.call('HSET', key, field, 1)     -- written by hand, not an integer: restart
        end
      end
    end
    if p.raise_top then redis.call('HSET', key, 'top', lv, 'top_us', now) end
  end
  if p.fresh then redis.call('PEXPIRE', key, ttl_ms) end
end

-- Pool admission (pool.lua "admit"; planned by distlb/_core/admission.py, which states
-- the rule): the pool's request limits, with a reserve held for higher priorities on the
-- pool-wide one (prio_read / prio_need / prio_count above, shared with bucket.lua), then
-- its bandwidth limits; all are read and checked before anything is charged (a denial
-- charges nothing). KEYS[7..11]: the pool's bucket (rl), the client's (rl:c:<client>),
-- the priority hash (prio), the client's bandwidth (rl:cb:<client>), the chosen
-- backend's (rl:bb:<backend>). ARGV[5..11]: pool and client specs ("rate burst" or "-"),
-- the priority level, "<reserve per level> <starve us> <window us>", bytes, client and
-- backend bandwidth specs. An admitted call costs the priority hash one HMGET and one
-- HSET.
local function admit_read(now)
  local p = prio_read(KEYS[9], ARGV[7], ARGV[8], now)
  local a = {status = 'ok', buckets = {}, lv = p.lv, shed = false, prio = p}
  local nbytes = tonumber(ARGV[9]) or 0
  for i, kind in ipairs({'pool', 'client', 'client_bandwidth', 'backend_bandwidth'}) do
    local k = i < 3 and 6 + i or 7 + i                 -- KEYS 7, 8, 10, 11
    local rate_s, burst_s = string.match(ARGV[i < 3 and 4 + i or 7 + i], '^(%S+) (%S+)$')
    local cost = i < 3 and 1 or nbytes
    if rate_s and cost > 0 and a.status == 'ok' then
      local rate, burst = tonumber(rate_s), tonumber(burst_s)
      local tokens, _, rewrite, exp = bucket_read(KEYS[k], rate, burst, now, rate_s, burst_s)
      local need = cost
      if i == 1 then need = prio_need(p, cost, burst) end
      if tokens < need then
        a.status = string.format('limited:%s %s', kind,
          fmt(bucket_wait_s(tokens, rate, burst, need)))
        a.shed = tokens >= cost
      end
      a.buckets[#a.buckets + 1] = {KEYS[k], tokens - cost, rate, burst, rewrite, rate_s,
        burst_s, exp}
    end
  end
  return a
end
local function admit_charge(a, now)
  for _, b in ipairs(a.buckets) do
    bucket_write(b[1], b[2], b[3], b[4], now, b[5], b[6], b[7], b[8])
  end
end
local function admit_count(a, now, ttl_ms)
  prio_count(a.prio, a.status == 'ok', string.sub(a.status, 1, 8) == 'limited:', a.shed, now,
    ttl_ms)
end

-- Whether a string is valid UTF-8 (as Python decodes it: no overlongs, no surrogates).
-- Replies must be: a client with decode_responses=True fails on the whole reply otherwise,
-- so entries written by hand that are not UTF-8 are left out of replies.
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
