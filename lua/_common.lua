-- _common.lua: helpers shared by every distlb script.
--
-- distlb/_scripts.py prepends this file to each script before loading it, so
-- the token-bucket arithmetic exists once. It defines locals only and touches
-- no keys.

-- The server clock in integer microseconds. ~1.8e15 today, far below 2^53, so
-- a Lua double holds it exactly and differences between two readings are exact.
-- Every process and host uses this clock: client clocks never reach state.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Fractions leave Lua as strings: a Lua number in a reply is truncated to an
-- integer, and one passed to redis.call is written with 14 digits ("%.14g"),
-- which loses precision and turns integers >= 1e14 into "1e+14". fmt is
-- round-trip exact: the shortest of 15 and 17 significant digits that reads
-- back as the same double, so round values stay plain in redis-cli ("10",
-- "0.5") and a stored rate such as 100/3 compares equal to the caller's.
local function fmt(x)
  if x == math.huge then return 'inf' end
  if x == -math.huge then return '-inf' end
  if x ~= x then return 'nan' end
  local s = string.format('%.15g', x)
  if tonumber(s) ~= x then s = string.format('%.17g', x) end
  return s
end

-- A number as the integer argument of a command (HINCRBY, ZADD scores in us):
-- "%d", never the "%.14g" redis.call would use.
local function int(x)
  return string.format('%d', x)
end

-- A TTL for PEXPIRE, in ms, as a string: at least 1 ms and at most ~31 years,
-- whatever the arithmetic gave (NaN, inf, a huge refill time). The clients
-- validate ranges so that this never bites; it is here so that no script can
-- fail in PEXPIRE after it wrote, leaving a key without a TTL.
local MAX_TTL_MS = 1e12
local function ttl(ms)
  if ms ~= ms or ms > MAX_TTL_MS then ms = MAX_TTL_MS end
  if ms < 1 then ms = 1 end
  return string.format('%d', math.ceil(ms))
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
-- Returns tokens, whether the stored rate/burst differ from the given ones, and
-- whether rate/burst must be (re)written on the next write.
local function bucket_read(key, rate, burst, now)
  local s = redis.call('HMGET', key, 'tokens', 'ts_us', 'rate', 'burst')
  local tokens = finite(s[1])
  local ts = finite(s[2])
  if tokens == nil or ts == nil then
    return burst, false, true
  end
  -- A failover to a replica with a slower clock must not mint tokens from a
  -- negative interval, hence the max().
  local elapsed = math.max(0, now - ts)
  tokens = math.min(burst, tokens + elapsed * rate / 1000000)
  local differs = tonumber(s[3]) ~= rate or tonumber(s[4]) ~= burst
  return tokens, differs, differs
end

-- Store a bucket and expire it once it would be full again: an expired bucket
-- reads as full, so expiry loses nothing and abandoned buckets cost no memory.
-- rate and burst are stored for people (redis-cli, distlb inspect) and for
-- conflict detection; they are rewritten only when they change.
local function bucket_write(key, tokens, rate, burst, now, with_config)
  if with_config then
    redis.call('HSET', key, 'tokens', fmt(tokens), 'ts_us', int(now),
      'rate', fmt(rate), 'burst', fmt(burst))
  else
    redis.call('HSET', key, 'tokens', fmt(tokens), 'ts_us', int(now))
  end
  redis.call('PEXPIRE', key, ttl((burst - tokens) / rate * 1000 + 1000))
end

-- Seconds until `cost` tokens are available (inf when cost exceeds burst).
local function bucket_wait_s(tokens, rate, burst, cost)
  if cost > burst then return math.huge end
  if tokens >= cost then return 0 end
  return (cost - tokens) / rate
end
