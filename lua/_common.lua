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
-- integer. 14 significant digits (Lua's own tostring precision) keeps tiny
-- rates exact enough and shows round values plainly ("10", "0.5") in redis-cli.
local function fmt(x)
  if x == math.huge then return 'inf' end
  return string.format('%.14g', x)
end

-- Token bucket state at `now`: refilled since its last write, capped at burst.
-- A missing hash is a full bucket; that is why keys may expire once full.
-- Returns tokens, whether the stored rate/burst differ from the given ones, and
-- whether rate/burst must be (re)written on the next write.
local function bucket_read(key, rate, burst, now)
  local s = redis.call('HMGET', key, 'tokens', 'ts_us', 'rate', 'burst')
  local tokens = tonumber(s[1])
  local ts = tonumber(s[2])
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
    redis.call('HSET', key, 'tokens', fmt(tokens), 'ts_us', string.format('%d', now),
      'rate', fmt(rate), 'burst', fmt(burst))
  else
    redis.call('HSET', key, 'tokens', fmt(tokens), 'ts_us', string.format('%d', now))
  end
  local refill_ms = math.ceil((burst - tokens) / rate * 1000)
  redis.call('PEXPIRE', key, refill_ms + 1000)
end

-- Seconds until `cost` tokens are available (inf when cost exceeds burst).
local function bucket_wait_s(tokens, rate, burst, cost)
  if cost > burst then return math.huge end
  if tokens >= cost then return 0 end
  return (cost - tokens) / rate
end
