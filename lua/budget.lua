-- budget.lua: a retry budget shared by the fleet (Finagle's model).
--
-- Every request deposits, every retry withdraws. Over a sliding window of
-- window_ms (split in `buckets` buckets), retries are allowed while
--     withdrawals + 1 <= ratio x deposits + min_per_s x window_s
-- so retries can never exceed `ratio` of the traffic plus a small reserve that
-- lets a quiet service still retry.
--
-- KEYS[1]   hash: "<bucket>:d" deposits, "<bucket>:w" withdrawals, per bucket
-- ARGV[1]   op: "deposit" (only add ARGV[2] deposits), "withdraw" (add ARGV[2]
--           deposits, then try to take one retry), "peek" (read only)
-- ARGV[2]   deposits to add (the client batches them), >= 0
-- ARGV[3]   "<ratio> <min_per_s> <window_ms> <buckets>" (window_ms may be fractional;
--           window_ms / buckets >= 1: bucket numbers stay integers written exactly)
-- Returns "<allowed 0|1> <deposits> <withdrawals> <balance>": the window's counts
--   after this call and what is left to withdraw (a string: it is fractional).
-- Expires: 2 x window_ms after the last write.
-- Writes: everything is read and decided first; then stale buckets are dropped,
--   the counts added and the TTL set, so nothing can fail after the first write.
--   "peek" never writes.

local op, add = ARGV[1], tonumber(ARGV[2])
local ratio, min_per_s, window_ms, buckets = string.match(ARGV[3], '^(%S+) (%S+) (%S+) (%S+)$')
ratio, min_per_s, window_ms, buckets = tonumber(ratio), tonumber(min_per_s),
  tonumber(window_ms), tonumber(buckets)
-- The bucket number from the us clock (a ms clock would make sub-ms buckets
-- jump), written with "%d": concatenating a number >= 1e14 gives "1.7e+14".
local cur = math.floor(now_us() / (window_ms * 1000 / buckets))
local cur_d, cur_w = int(cur) .. ':d', int(cur) .. ':w'

local deposits, withdrawals = add, 0
local stale = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local b, kind = string.match(flat[i], '^(%d+):(%a)$')
  b = tonumber(b)
  local v = tonumber(flat[i + 1])
  if b == nil or v == nil or b <= cur - buckets then
    stale[#stale + 1] = flat[i]
  elseif kind == 'd' then
    deposits = deposits + v
  else
    withdrawals = withdrawals + v
  end
end

local balance = ratio * deposits + min_per_s * window_ms / 1000 - withdrawals
local allowed = 0
if op == 'withdraw' and balance >= 1 then
  withdrawals, balance, allowed = withdrawals + 1, balance - 1, 1
end
if op ~= 'peek' then
  for i = 1, #stale, 1000 do
    redis.call('HDEL', KEYS[1], unpack(stale, i, math.min(i + 999, #stale)))
  end
  if add > 0 then redis.call('HINCRBY', KEYS[1], cur_d, int(add)) end
  if allowed == 1 then redis.call('HINCRBY', KEYS[1], cur_w, 1) end
  redis.call('PEXPIRE', KEYS[1], ttl(window_ms * 2))
end
return string.format('%d %d %d %s', allowed, deposits, withdrawals, fmt(balance))
