-- bucket.lua: one or more token buckets checked and charged together, all or nothing.
--
-- Used by TokenBucket (one bucket) and TrafficShaper (global + client + bandwidth
-- buckets). If any bucket denies, no bucket is charged: a global deny never
-- consumes the client's tokens, nor the other way round.
--
-- KEYS[1..n]  bucket hashes; fields tokens, ts_us (server time, us), rate, burst
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
--   "<allowed 0|1> <conflict 0|1>" then, per limited bucket, 7 fields
--   "<i> <ok 0|1> <remaining> <retry_after_s> <reset_after_s> <rate> <burst>"
--   where i is the bucket's 1-based position in KEYS; "inf" for retry_after_s
--   when cost exceeds burst (never admissible). Unlimited buckets are left out.
-- Expires: each bucket once it would be full again (+1 s); see bucket_write.
-- Ranges: the clients send rates, bursts and costs in [1e-9, 1e12] with burst / rate
--   at most 10 years and cost >= burst x 1e-12 (distlb/_validate.py); a shared override
--   may pair a cost with a larger burst, so the cost is raised to burst x 1e-12 here
--   (below that, tokens - cost would round to tokens and never charge). An override
--   that is not two positive finite numbers is ignored.
-- Writes: all reads and checks come first, then each bucket's HSET with its PEXPIRE
--   (clamped), so nothing can fail after the first write.

local mode, limits_ttl = string.match(ARGV[1], '^(%a+) (%d+)$')
local take = mode == 'take'
local n = #ARGV - 1
local limits_key = nil
if limits_ttl ~= '0' then limits_key = KEYS[n + 1] end
local now = now_us()

-- Bucket i at `now`: nil when unlimited, else tokens, wait (s), rate, burst, cost,
-- whether rate/burst must be rewritten, rate and burst as strings (as the caller
-- spelled them, or as overridden), and whether the stored settings conflict.
-- Reads only.
local function check(i)
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
  if rate <= 0 then return nil end
  if cost < burst * 1e-12 then cost = burst * 1e-12 end
  local tokens, differs, rewrite = bucket_read(KEYS[i], rate, burst, now, rate_s, burst_s)
  -- Two processes configured differently for one bucket: the caller's values apply
  -- to its call and the client is told, so it can warn.
  return tokens, bucket_wait_s(tokens, rate, burst, cost), rate, burst, cost, rewrite,
    rate_s, burst_s, differs and not overridden
end

-- One bucket's part of the reply: a single string.format, fractions "%.17g" (round-trip
-- exact), rate and burst passed through as strings.
local ROW = '%d %d %.17g %.17g %.17g %s %s'

if n == 1 then
  -- The common case (TokenBucket, a global-only TrafficShaper): no tables.
  local tokens, wait, rate, burst, cost, rewrite, rate_s, burst_s, conflict = check(1)
  if tokens == nil then return '1 0' end
  local ok = wait == 0 and 1 or 0
  if ok == 1 and take then
    tokens = tokens - cost
    bucket_write(KEYS[1], tokens, rate, burst, now, rewrite, rate_s, burst_s)
    -- PEXPIRE of a missing limits hash is a no-op (no EXISTS needed first)
    if limits_key then redis.call('PEXPIRE', limits_key, ttl(tonumber(limits_ttl))) end
  end
  return string.format('%d %d %d %d %.17g %.17g %.17g %s %s', ok, conflict and 1 or 0, 1, ok, tokens, wait,
    (burst - tokens) / rate, rate_s, burst_s)
end

-- Several buckets: every check first (reads only), then, if all allow and the mode is
-- take, every write; the checks wait in one flat table, 9 values per limited bucket.
local rows = {}
local m = 0
local all_ok = true
local conflict = 0
for i = 1, n do
  local tokens, wait, rate, burst, cost, rewrite, rate_s, burst_s, differs = check(i)
  if tokens ~= nil then
    if wait ~= 0 then all_ok = false end
    if differs then conflict = 1 end
    rows[m + 1], rows[m + 2], rows[m + 3], rows[m + 4], rows[m + 5] = i, tokens, wait, rate, burst
    rows[m + 6], rows[m + 7], rows[m + 8], rows[m + 9] = cost, rewrite, rate_s, burst_s
    m = m + 9
  end
end
local write = all_ok and take
local reply = (all_ok and '1 ' or '0 ') .. conflict
for j = 1, m, 9 do
  local tokens, wait, rate, burst = rows[j + 1], rows[j + 2], rows[j + 3], rows[j + 4]
  if write then
    tokens = tokens - rows[j + 5]
    bucket_write(KEYS[rows[j]], tokens, rate, burst, now, rows[j + 6], rows[j + 7],
      rows[j + 8])
  end
  reply = reply .. ' ' .. string.format(ROW, rows[j], wait == 0 and 1 or 0, tokens, wait,
    (burst - tokens) / rate, rows[j + 7], rows[j + 8])
end
if write and limits_key then
  redis.call('PEXPIRE', limits_key, ttl(tonumber(limits_ttl)))
end
return reply
