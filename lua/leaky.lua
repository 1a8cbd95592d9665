-- leaky.lua: a leaky bucket as a queue of departure slots (virtual scheduling).
--
-- Every admitted request is given its own departure time; consecutive slots are
-- cost/rate seconds apart, so requests leave evenly spaced at `rate` however many
-- processes submit them. The caller sleeps `delay_s` and then proceeds.
--
-- KEYS[1]   hash; fields next_us (server time the next slot starts, us; fractional,
--           round-trip exact: a slot may be shorter than 1 us), rate, capacity
-- ARGV[1]   mode: "take" reserves a slot; "peek" never writes
-- ARGV[2]   rate, units (requests or bytes) per second
-- ARGV[3]   capacity, units that may be queued (admitted, not yet departed);
--           the longest wait is therefore capacity / rate seconds
-- ARGV[4]   cost, units this request takes (<= capacity)
-- Returns "<allowed 0|1> <delay_s> <queued_after> <retry_after_s> <conflict 0|1>",
--   one space-separated string (cheapest to send and parse)
--   delay_s: how long the caller waits for its slot (0 when the queue is empty)
--   queued_after: units queued after this call, fractions as strings
--   retry_after_s: when denied, the wait until `cost` units fit in the queue
-- Expires: once the last slot has passed (+1 s); an empty queue needs no key.
-- Ranges: rate, capacity and cost in [1e-9, 1e12], capacity / rate (the longest
--   wait) at most 10 years, cost >= capacity x 1e-12 (distlb/_validate.py), so
--   next_us stays far below 2^53 and the TTL far below PEXPIRE's limit.
-- Writes: one HSET (rate and capacity only when missing or changed, as the client
--   spelled them) with its
--   PEXPIRE (clamped), after every read: nothing can fail after the write.

local mode = ARGV[1]
local rate_s, capacity_s = ARGV[2], ARGV[3]
local rate, capacity, cost = tonumber(rate_s), tonumber(capacity_s), tonumber(ARGV[4])
local now = now_us()

local s = redis.call('HMGET', KEYS[1], 'next_us', 'rate', 'capacity')
local next_us = math.max(now, finite(s[1]) or now)
-- spelled alike (the common case): equal without converting; else compared by value
local differs = (s[2] ~= rate_s and tonumber(s[2]) ~= rate)
  or (s[3] ~= capacity_s and tonumber(s[3]) ~= capacity)
local conflict = (s[2] and differs) and 1 or 0
local wait_us = next_us - now
local queued = wait_us * rate / 1000000

-- Tolerance: the clock counts whole microseconds, so the queue is known only to
-- within what leaks in 1 us (rate x 1e-6), plus double rounding (capacity x 1e-12).
-- Replies: one string.format, fractions "%.17g" (round-trip exact).
if queued + cost > capacity * (1 + 1e-12) + rate * 1e-6 then
  local retry = (queued + cost - capacity) / rate
  return string.format('0 %.17g %.17g %.17g %d', wait_us / 1000000, queued, retry, conflict)
end
if mode == 'take' then
  local new_next = next_us + cost / rate * 1000000
  -- numbers go to redis.call as numbers: the server writes them exactly
  if differs then
    redis.call('HSET', KEYS[1], 'next_us', new_next, 'rate', rate_s, 'capacity', capacity_s)
  else
    redis.call('HSET', KEYS[1], 'next_us', new_next)
  end
  redis.call('PEXPIRE', KEYS[1], ttl((new_next - now) / 1000 + 1000))
  queued = queued + cost
end
return string.format('1 %.17g %.17g 0 %d', wait_us / 1000000, queued, conflict)
