-- priority.lua: a token bucket whose waiters are served in priority order, with aging.
--
-- Waiters enter a sorted set; only the head of the queue may take tokens, so
-- across all processes a waiting higher-priority request is admitted before a
-- lower one. Score = enqueued_s / aging_s - level (lowest first): a request's
-- effective priority is level + waited_s / aging_s, so waiting aging_s seconds is
-- worth one level and no level starves. Since every waiter ages at the same
-- pace, the ordering never changes after enqueue and a static score suffices.
-- A waiter keeps its place by polling; a process that dies stops polling and
-- its entry is pruned once its lease expires.
--
-- KEYS[1]   bucket hash (as in bucket.lua: tokens, ts_us, rate, burst)
-- KEYS[2]   queue zset: member "<level>|<ticket>", score as above
-- KEYS[3]   lease zset: same members, score = lease expiry (server us)
-- KEYS[4]   depth hash: level -> number of waiters at that level
-- ARGV[1]   mode: "poll" (enter or stay in the queue; take tokens at the head),
--           "try" (take tokens only if no waiter is ahead; never enqueue),
--           "cancel" (leave the queue)
-- ARGV[2]   ticket: unique id of this request
-- ARGV[3]   level: integer priority, higher is served first
-- ARGV[4]   rate, tokens per second    ARGV[5] burst, tokens    ARGV[6] cost, tokens
-- ARGV[7]   max waiters at this level  ARGV[8] aging_s, seconds  ARGV[9] lease_ms
-- Returns {allowed 0|1, status, retry_after_s, position, remaining}
--   status: "admitted" | "queued" | "queue_full" | "busy" (try mode) | "cancelled"
--   position: 0-based rank in the queue (-1 when not queued)
-- Expires: the bucket as in bucket.lua; queue, lease and depth keys 2 x lease_ms
--   after the last write (each poll refreshes them, and so does every call that
--   prunes or cancels a waiter).
-- Ranges: rate, burst and cost as in bucket.lua; scores and lease expiries are
--   written exactly (fmt / "%d"), not with the 14 digits of redis.call.
-- Writes: every read that could fail (the bucket hash) comes before the first
--   write; every write path ends with its PEXPIREs (clamped).

local mode, ticket, level = ARGV[1], ARGV[2], tonumber(ARGV[3])
local rate, burst, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local max_depth, aging_s, lease_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local bucket, queue, leases, depth = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member = string.format('%d', level) .. '|' .. ticket
local now = now_us()

local function leave(m)
  if redis.call('ZREM', queue, m) == 1 then
    redis.call('ZREM', leases, m)
    local level_field = string.match(m, '^(-?%d+)|')
    if redis.call('HINCRBY', depth, level_field, -1) <= 0 then
      redis.call('HDEL', depth, level_field)
    end
  end
end

local function touch()
  local queue_ttl = ttl(lease_ms * 2)
  for _, k in ipairs({queue, leases, depth}) do redis.call('PEXPIRE', k, queue_ttl) end
end

local tokens, _, rewrite, exp = bucket_read(bucket, rate, burst, now)

-- Prune waiters whose process stopped polling (bounded work per call).
local pruned = false
for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 64)) do
  leave(m)
  pruned = true
end
if pruned then touch() end

if mode == 'cancel' then
  leave(member)
  touch()
  return {0, 'cancelled', fmt(0), -1, fmt(0)}
end
local my_score = tonumber(redis.call('ZSCORE', queue, member))
local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
local score = now / 1000000 / aging_s - level

-- Ahead of everyone? (already the head, or not queued and better than the head)
local first
if my_score then
  first = head[1] == member
else
  first = head[1] == nil or score < tonumber(head[2])
end

if first and tokens >= cost then
  tokens = tokens - cost
  bucket_write(bucket, tokens, rate, burst, now, rewrite, nil, nil, exp)
  if my_score then leave(member); touch() end
  return {1, 'admitted', fmt(0), -1, fmt(tokens)}
end

local wait_tokens = bucket_wait_s(tokens, rate, burst, cost)
if mode == 'try' then
  return {0, first and 'busy' or 'queued_ahead', fmt(wait_tokens), -1, fmt(tokens)}
end

if not my_score then
  if tonumber(redis.call('HGET', depth, string.format('%d', level)) or '0') >= max_depth then
    return {0, 'queue_full', fmt(math.max(wait_tokens, cost / rate)), -1, fmt(tokens)}
  end
  redis.call('ZADD', queue, fmt(score), member)
  redis.call('HINCRBY', depth, string.format('%d', level), 1)
end
redis.call('ZADD', leases, int(now + lease_ms * 1000), member)
touch()
local rank = redis.call('ZRANK', queue, member)
-- Hint: the head waits for its tokens; the others also for those ahead of them.
local hint = wait_tokens + rank * cost / rate
return {0, 'queued', fmt(hint), rank, fmt(tokens)}
