-- bucket.lua: one or more token buckets checked and charged together, all or nothing,
-- with the fleet's shared overrides and, when the call has one, request priority on the
-- first (global) bucket.
--
-- Used by TokenBucket (one bucket) and TrafficShaper (global + client + bandwidth
-- buckets, the limits hash, priority). If any bucket denies, no bucket is charged: a
-- global deny never consumes the client's tokens, nor the other way round. Priority goes
-- through prio_read / prio_need / prio_count of _common.lua: the same rule and code as a
-- pool's admission (pool.lua admit).
--
-- KEYS[1..n]  bucket hashes; fields tokens, ts_us (server time, us), rate, burst (as the
--             client spelled them, or as overridden), exp_us (server us before which the
--             key's TTL does not end); the first is a shaper's global bucket
-- KEYS[n+1]   only when limits_ttl_ms > 0 (a shaper's calls): the limits hash, field ->
--             "<rate> <burst>" (dynamic per-client/per-backend limits shared by the fleet)
-- KEYS[last]  with a priority only: the priority hash (see prio_read in _common.lua)
-- ARGV[1]     "<mode> <limits_ttl_ms>[ <level> <reserve per level> <starve us> <window us>]":
--             mode "take" charges when every bucket allows, "peek" never writes (nor
--             counts); limits_ttl_ms 0 = no limits hash; a level (0..9) ranks the call:
--             the first bucket then keeps a reserve for higher levels asking
--             (prio_need), and the call is counted
-- ARGV[1+i]   bucket i, "<rate> <burst> <cost>[ <field>]" (n = #ARGV - 1, at most 16):
--   rate      default refill, tokens per second; 0 (and no override) = unlimited
--   burst     default capacity, tokens
--   cost      tokens this request takes
--   field     field of the limits hash overriding rate/burst (optional)
--   (Packed into one argument per bucket: each argument costs the client more
--   than parsing it costs Lua, and this is the hot path.)
-- Returns one string of space-separated fields (a flat string is the cheapest
--   reply to send and parse on the hot path):
--   "<allowed 0|1> <conflict 0|1>" then, per limited bucket, 6 fields
--   "<i> <ok 0|1> <remaining> <retry_after_s> <rate> <burst>"
--   where i is the bucket's 1-based position in KEYS; fractions "%.17g" (round-trip
--   exact), rate and burst as the client sent them unless overridden; retry_after_s
--   "0" when ok, "inf" when cost exceeds burst (never admissible). The time until full,
--   (burst - remaining) / rate, is left to the client. Unlimited buckets are left out.
--   With a priority, the first bucket's retry_after_s is the wait for cost + reserve;
--   remaining < cost tells a denial by the tokens themselves from one by the reserve
--   alone ("shed").
-- Expires: each bucket no sooner than once it would be full again (+1 s), no later than
--   its longest refill (burst / rate) + 2 s after its last write: a write sets a TTL
--   only when exp_us does not cover it. The limits hash: limits_ttl_ms after its last
--   change (config.lua) and, at each take that gives a bucket a new TTL of ms,
--   limits_ttl_ms + ms: every take falls within its buckets' TTLs (ms), so the hash
--   outlives the last take by limits_ttl_ms, without a PEXPIRE on every call. The
--   priority hash: limits_ttl_ms after its creation (then it starts again with fresh
--   counters).
-- Ranges: the clients send rates, bursts and costs in [1e-9, 1e12] with burst / rate
--   at most 10 years and cost >= burst x 1e-12 (distlb/_validate.py); a shared override
--   may pair a cost with a larger burst, so the cost is raised to burst x 1e-12 here
--   (below that, tokens - cost would round to tokens and never charge). An override
--   that is not two positive finite numbers is ignored. The priority level is an int in
--   [0, 9] (the client validates).
-- Writes: every read first (TIME, HMGET of the limits, of each bucket, of the priority
--   hash), then each bucket's HSET with its PEXPIRE (clamped) when due, then the
--   counters, so nothing can fail after the first write.
-- Cost: this is the hottest script. Its common path (one bucket, no priority) creates no
--   tables and almost no closures, formats once, and sends three commands (TIME, HMGET,
--   HSET); see benchmarks/_server.py for its server time per call.

local mode, limits_ttl, level_s, policy = string.match(ARGV[1],
  '^(%a+) (%d+) ?(%d*) ?(.*)$')
local take = mode == 'take'
local n = #ARGV - 1
local limits_key, prio_k = nil, n + 1
limits_ttl = tonumber(limits_ttl)
if limits_ttl > 0 then limits_key, prio_k = KEYS[n + 1], n + 2 end
local t = redis.call('TIME')                        -- now_us(), inline
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prio = nil
if level_s ~= '' then prio = prio_read(KEYS[prio_k], level_s, policy, now) end
local limits_ms = nil                               -- the longest new bucket TTL written

-- Every override this call may use, in one read when there are several buckets (one
-- bucket, the hot path: its HGET below, and no table).
local over = nil
if n > 1 then
  local fields, nf = {}, 0
  for i = 1, n do
    local field = string.match(ARGV[1 + i], '^%S+ %S+ %S+ (%S+)$')
    if field then nf = nf + 1; fields[nf] = field end
  end
  over = {}
  if nf > 0 and limits_key then
    local got = redis.call('HMGET', limits_key, unpack(fields))
    for j = 1, nf do over[fields[j]] = got[j] end
  end
end

-- The arithmetic of bucket_read / bucket_write (_common.lua), inline: every local
-- function and table a call creates is garbage for the server's Lua collector, and on
-- the hot path that costs more than the arithmetic. Keep the two in step.

-- Store bucket i (key), charged: tokens and the time; the settings when they changed;
-- a new TTL only when the one it has (exp_us) would end before the bucket is full again.
local function write(key, tokens, rate, burst, config, rate_s, burst_s, exp)
  if exp and exp <= now + MAX_TTL_MS * 1000
      and exp >= now + (burst - tokens) / rate * 1000000 + 1000000 then
    if config then
      redis.call('HSET', key, 'tokens', tokens, 'ts_us', now, 'rate', rate_s, 'burst', burst_s)
    else
      redis.call('HSET', key, 'tokens', tokens, 'ts_us', now)
    end
    return
  end
  local ms = ttl(burst / rate * 1000 + 2000)
  if not limits_ms or ms > limits_ms then limits_ms = ms end
  if config then
    redis.call('HSET', key, 'tokens', tokens, 'ts_us', now, 'rate', rate_s, 'burst', burst_s,
      'exp_us', now + (ms - 1) * 1000)
  else
    redis.call('HSET', key, 'tokens', tokens, 'ts_us', now, 'exp_us', now + (ms - 1) * 1000)
  end
  redis.call('PEXPIRE', key, ms)
end

-- Every check first (reads only), then, if all allow and the mode is take, every
-- write. One bucket (the common case) stays in locals; several wait in a flat table.
local rows = nil
if n > 1 then rows = {} end
local m = 0
local all_ok, conflict, short = true, 0, false
local tokens1, wait1, rate1, burst1, cost1, config1, rate_s1, burst_s1, exp1
for i = 1, n do
  local rate_s, burst_s, c, field = string.match(ARGV[1 + i], '^(%S+) (%S+) (%S+) ?(%S*)$')
  local rate, burst, cost = tonumber(rate_s), tonumber(burst_s), tonumber(c)
  local overridden = false
  if limits_key and field ~= '' then
    local o
    if over then o = over[field] else o = redis.call('HGET', limits_key, field) end
    if o then
      local orate, oburst = string.match(o, '^(%S+) (%S+)$')
      orate, oburst = finite(orate), finite(oburst)
      if orate and oburst and orate > 0 and oburst > 0 then
        rate, burst, overridden = orate, oburst, true
        -- the reply carries these; the client parses them with float(), which a
        -- hand-written spelling Lua accepts ("0x10", " 5") need not suit
        rate_s, burst_s = string.format('%.17g', rate), string.format('%.17g', burst)
      end
    end
  end
  if rate > 0 then
    if cost < burst * 1e-12 then cost = burst * 1e-12 end
    local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts_us', 'rate', 'burst', 'exp_us')
    local tokens, ts, exp = tonumber(s[1]), tonumber(s[2]), tonumber(s[5])
    local config = true
    -- x - x == 0: a number, not NaN nor +-inf (what finite() checks, without a call)
    if tokens and ts and tokens - tokens == 0 and ts - ts == 0 then
      local elapsed = now - ts       -- > 0: a failover to a slower clock mints nothing
      if elapsed > 0 then tokens = tokens + elapsed * rate / 1000000 end
      if tokens > burst then tokens = burst end
      config = (s[3] ~= rate_s and tonumber(s[3]) ~= rate)
        or (s[4] ~= burst_s and tonumber(s[4]) ~= burst)
      -- Two processes configured differently for one bucket: the caller's values
      -- apply to its call and the client is told, so it can warn.
      if config and not overridden then conflict = 1 end
    else
      tokens = burst
    end
    if exp and exp - exp ~= 0 then exp = nil end
    local wait, need = 0, cost                        -- bucket_wait_s()
    if prio and i == 1 then need = prio_need(prio, cost, burst) end
    if cost > burst then wait = math.huge elseif tokens < need then wait = (need - tokens) / rate end
    if wait ~= 0 then
      all_ok = false
      if tokens < cost then short = true end     -- denied by the tokens, not the reserve
    end
    if rows then
      rows[m + 1], rows[m + 2], rows[m + 3], rows[m + 4], rows[m + 5] = i, tokens, wait, rate, burst
      rows[m + 6], rows[m + 7], rows[m + 8], rows[m + 9], rows[m + 10] = cost, config, rate_s,
        burst_s, exp
      m = m + 10
    else
      tokens1, wait1, rate1, burst1, cost1, config1, rate_s1, burst_s1, exp1 =
        tokens, wait, rate, burst, cost, config, rate_s, burst_s, exp
    end
  end
end

-- After a take: the priority counters, and the limits hash's TTL when a bucket got one.
local function done(allowed)
  if not take then return end
  if prio then prio_count(prio, allowed, not allowed, not allowed and not short, now, limits_ttl) end
  -- PEXPIRE of a missing limits hash is a no-op: no EXISTS first
  if limits_ms and limits_key then
    redis.call('PEXPIRE', limits_key, ttl(limits_ttl + limits_ms))
  end
end

-- Replies: "%.17g" is round-trip exact; rate and burst go back as strings, as spelled.
if not rows then
  if tokens1 == nil then done(true); return '1 0' end  -- unlimited
  if wait1 ~= 0 then
    done(false)
    return string.format('0 %d 1 0 %.17g %.17g %s %s', conflict, tokens1, wait1, rate_s1,
      burst_s1)
  end
  if take then
    tokens1 = tokens1 - cost1
    write(KEYS[1], tokens1, rate1, burst1, config1, rate_s1, burst_s1, exp1)
    done(true)
  end
  return string.format('1 %d 1 1 %.17g 0 %s %s', conflict, tokens1, rate_s1, burst_s1)
end
local write_all = all_ok and take
local reply = (all_ok and '1 ' or '0 ') .. conflict
for j = 1, m, 10 do
  local tokens, wait = rows[j + 1], rows[j + 2]
  if write_all then
    tokens = tokens - rows[j + 5]
    write(KEYS[rows[j]], tokens, rows[j + 3], rows[j + 4], rows[j + 6], rows[j + 7],
      rows[j + 8], rows[j + 9])
  end
  if wait == 0 then
    reply = reply .. string.format(' %d 1 %.17g 0 %s %s', rows[j], tokens, rows[j + 7],
      rows[j + 8])
  else
    reply = reply .. string.format(' %d 0 %.17g %.17g %s %s', rows[j], tokens, wait,
      rows[j + 7], rows[j + 8])
  end
end
done(all_ok)
return reply
