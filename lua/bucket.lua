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
limits_ttl = tonumber(limits_ttl)
local n = #ARGV - 1
local limits_key = nil
if limits_ttl > 0 then limits_key = KEYS[n + 1] end
local now = now_us()

local rows = {}
local live = {}
local all_ok = true
local conflict = 0
for i = 1, n do
  local r, b, c, field = string.match(ARGV[1 + i], '^(%S+) (%S+) (%S+) ?(%S*)$')
  local rate, burst, cost = tonumber(r), tonumber(b), tonumber(c)
  local overridden = false
  if limits_key and field ~= '' then
    local o = redis.call('HGET', limits_key, field)
    if o then
      local orate, oburst = string.match(o, '^(%S+) (%S+)$')
      orate, oburst = finite(orate), finite(oburst)
      if orate and oburst and orate > 0 and oburst > 0 then
        rate, burst, overridden = orate, oburst, true
      end
    end
  end
  if rate > 0 then
    cost = math.max(cost, burst * 1e-12)
    local tokens, differs, rewrite = bucket_read(KEYS[i], rate, burst, now)
    -- Two processes configured differently for one bucket: the caller's values
    -- apply to its call and the client is told, so it can warn.
    if differs and not overridden then conflict = 1 end
    local wait = bucket_wait_s(tokens, rate, burst, cost)
    local ok = wait == 0
    if not ok then all_ok = false end
    live[#live + 1] = {KEYS[i], cost, rewrite}
    rows[#rows + 1] = {i, ok and 1 or 0, tokens, wait, rate, burst}
  end
end

local out = {all_ok and 1 or 0, conflict}
for j, row in ipairs(rows) do
  local tokens, rate, burst = row[3], row[5], row[6]
  if all_ok and mode == 'take' then
    tokens = tokens - live[j][2]
    bucket_write(live[j][1], tokens, rate, burst, now, live[j][3])
  end
  out[#out + 1] = string.format('%d %d %s %s %s %s %s', row[1], row[2], fmt(tokens),
    fmt(row[4]), fmt((burst - tokens) / rate), fmt(rate), fmt(burst))
end
if all_ok and mode == 'take' and limits_key and redis.call('EXISTS', limits_key) == 1 then
  redis.call('PEXPIRE', limits_key, ttl(limits_ttl))
end
return table.concat(out, ' ')
