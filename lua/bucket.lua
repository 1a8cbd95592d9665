-- bucket.lua: one or more token buckets checked and charged together, all or nothing.
--
-- Used by TokenBucket (one bucket) and TrafficShaper (global + client + bandwidth
-- buckets). If any bucket denies, no bucket is charged: a global deny never
-- consumes the client's tokens, nor the other way round.
--
-- KEYS[1..n]  bucket hashes; fields tokens, ts_us (server time, us), rate, burst
-- KEYS[n+1]   only when ARGV[3] > 0: the limits hash, field -> "<rate> <burst>"
--             (dynamic per-client/per-backend limits shared by the fleet)
-- ARGV[1]     mode: "take" charges when every bucket allows; "peek" never writes
-- ARGV[2]     n, the number of buckets (1..16)
-- ARGV[3]     TTL of the limits hash in ms, refreshed on each take; 0 = no limits hash
-- then 5 values per bucket:
--   label     the limit's name in replies, e.g. "global", "client", "client_bandwidth"
--   field     field of the limits hash overriding rate/burst, or "" for none
--   rate      default refill, tokens per second; "0" (and no override) = unlimited
--   burst     default capacity, tokens
--   cost      tokens this request takes
-- Returns {allowed 0|1, conflict 0|1, rows...}, one row per bucket:
--   {label, allowed 0|1, remaining tokens, retry_after_s, reset_after_s, rate, burst}
--   with fractions as strings ("inf" when cost exceeds burst: never admissible).
--   Unlimited buckets are left out of the rows.
-- Expires: each bucket once it would be full again (+1 s); see bucket_write.

local mode = ARGV[1]
local n = tonumber(ARGV[2])
local limits_ttl = tonumber(ARGV[3])
local limits_key = nil
if limits_ttl > 0 then limits_key = KEYS[n + 1] end
local now = now_us()

local rows = {}
local live = {}
local all_ok = true
local conflict = 0
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local label, field = ARGV[a + 1], ARGV[a + 2]
  local rate, burst, cost = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local overridden = false
  if limits_key and field ~= '' then
    local o = redis.call('HGET', limits_key, field)
    if o then
      local r, b = string.match(o, '^(%S+) (%S+)$')
      if r then rate, burst, overridden = tonumber(r), tonumber(b), true end
    end
  end
  if rate > 0 then
    local tokens, differs = bucket_read(KEYS[i], rate, burst, now)
    -- Two processes configured differently for one bucket: the caller's values
    -- apply to its call and the client is told, so it can warn.
    if differs and not overridden then conflict = 1 end
    local wait = bucket_wait_s(tokens, rate, burst, cost)
    local ok = wait == 0
    if not ok then all_ok = false end
    live[#live + 1] = {KEYS[i], tokens, rate, burst, cost}
    rows[#rows + 1] = {label, ok and 1 or 0, tokens, wait, rate, burst}
  end
end

local out = {all_ok and 1 or 0, conflict}
for j, row in ipairs(rows) do
  local tokens, rate, burst = row[3], row[5], row[6]
  if all_ok and mode == 'take' then
    tokens = tokens - live[j][5]
    bucket_write(live[j][1], tokens, rate, burst, now)
  end
  out[#out + 1] = {row[1], row[2], fmt(tokens), fmt(row[4]), fmt((burst - tokens) / rate),
    fmt(rate), fmt(burst)}
end
if all_ok and mode == 'take' and limits_key and redis.call('EXISTS', limits_key) == 1 then
  redis.call('PEXPIRE', limits_key, limits_ttl)
end
return out
