-- bucket.lua: one or more token buckets checked and charged together, all or nothing.
--
-- Used by TokenBucket (one bucket) and TrafficShaper (global + client + bandwidth
-- buckets). If any bucket denies, no bucket is charged: a global deny never
-- consumes the client's tokens, nor the other way round.
--
-- KEYS[1..n]  bucket hashes; fields tokens, ts_us (server time, us), rate, burst (as the
--             client spelled them, or as overridden), exp_us (server us before which the
--             key's TTL does not end)
-- KEYS[n+1]   only when the limits TTL is > 0: the limits hash, field -> "<rate> <burst>"
--             (dynamic per-client/per-backend limits shared by the fleet)
-- ARGV[1]     "<mode> <limits_ttl_ms>": mode "take" charges when every bucket allows,
--             "peek" never writes; limits_ttl_ms refreshes the limits hash on each
--             take, 0 = no limits hash
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
-- Expires: each bucket no sooner than once it would be full again (+1 s), no later than
--   its longest refill (burst / rate) + 2 s after its last write: a write sets a TTL
--   only when exp_us does not cover it (see bucket_write in _common.lua). The limits
--   hash: limits_ttl_ms after the last take.
-- Ranges: the clients send rates, bursts and costs in [1e-9, 1e12] with burst / rate
--   at most 10 years and cost >= burst x 1e-12 (distlb/_validate.py); a shared override
--   may pair a cost with a larger burst, so the cost is raised to burst x 1e-12 here
--   (below that, tokens - cost would round to tokens and never charge). An override
--   that is not two positive finite numbers is ignored.
-- Writes: all reads and checks come first, then each bucket's HSET with its PEXPIRE
--   (clamped) when due, so nothing can fail after the first write.
-- Cost: this is the hottest script. Its common path (one bucket) creates no tables and
--   almost no closures, formats once, and sends three commands (TIME, HMGET, HSET);
--   see benchmarks/_server.py for its server time per call.

local mode, limits_ttl = string.match(ARGV[1], '^(%a+) (%d+)$')
local take = mode == 'take'
local n = #ARGV - 1
local limits_key = nil
if limits_ttl ~= '0' then limits_key = KEYS[n + 1] end
local t = redis.call('TIME')                        -- now_us(), inline
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

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
local all_ok, conflict = true, 0
local tokens1, wait1, rate1, burst1, cost1, config1, rate_s1, burst_s1, exp1
for i = 1, n do
  local rate_s, burst_s, c, field = string.match(ARGV[1 + i], '^(%S+) (%S+) (%S+) ?(%S*)$')
  local rate, burst, cost = tonumber(rate_s), tonumber(burst_s), tonumber(c)
  local overridden = false
  if limits_key and field ~= '' then
    local o = redis.call('HGET', limits_key, field)
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
    local wait = 0                                    -- bucket_wait_s()
    if cost > burst then wait = math.huge elseif tokens < cost then wait = (cost - tokens) / rate end
    if wait ~= 0 then all_ok = false end
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

-- Replies: "%.17g" is round-trip exact; rate and burst go back as strings, as spelled.
if not rows then
  if tokens1 == nil then return '1 0' end             -- unlimited
  if wait1 ~= 0 then
    return string.format('0 %d 1 0 %.17g %.17g %s %s', conflict, tokens1, wait1, rate_s1,
      burst_s1)
  end
  if take then
    tokens1 = tokens1 - cost1
    write(KEYS[1], tokens1, rate1, burst1, config1, rate_s1, burst_s1, exp1)
    -- PEXPIRE of a missing limits hash is a no-op: no EXISTS first
    if limits_key then redis.call('PEXPIRE', limits_key, ttl(tonumber(limits_ttl))) end
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
if write_all and limits_key then
  redis.call('PEXPIRE', limits_key, ttl(tonumber(limits_ttl)))
end
return reply
