-- breaker.lua: one circuit breaker for the whole fleet (closed / open / half-open).
--
-- Every transition is decided here, on the server clock, so all processes see
-- the same state. Two trip rules share the same state machine:
--   "count": open after failure_threshold consecutive failures (a success resets);
--   "rate":  open when, over a sliding window of buckets, calls >= min_calls and
--            error rate > max(error_rate_threshold, k x baseline), where baseline is
--            a slow EWMA of the error rate of past buckets while closed (alpha per
--            bucket), learning only from buckets that would not have tripped it
--            (rate <= max(error_rate_threshold, k x baseline)).
-- Open -> half-open after open_timeout. Half-open hands out at most
-- half_open_max probe permits in total (leased: a permit whose process died
-- expires after probe_lease and its slot is free again); success_threshold
-- probe successes close the breaker, any probe failure opens it again.
-- Results count only in the period that admitted the call: a probe result (with its
-- permit) only while that permit is held in the current half-open period, a result
-- without a permit only while closed, and only in the same closed period (ARGV[8]: the
-- closed_us its caller's view had when it admitted the call; every move to closed, and
-- reset(), starts a new period); any other (late) result changes nothing.
--
-- KEYS[1]   main hash: state, forced, failures, successes, opened_us, closed_us, version,
--           baseline, folded (closed_us: version of the last move to closed, 0 if never)
-- KEYS[2]   probes zset: permit -> lease expiry (server us)
-- KEYS[3]   window hash ("rate" rule): "<bucket>:c" calls, "<bucket>:e" errors
-- ARGV[1]   op: attempt | success | failure | state | force
-- ARGV[2]   permit id (attempt: the id to hand out; success/failure: the probe permit
--           the attempt got, "" for a call admitted while closed), or for force:
--           "open", "closed", or "" (reset: back to closed, counts cleared)
-- ARGV[3]   events channel ("" = publish nothing); ARGV[4] breaker name (for events)
-- ARGV[5]   rule config: "count <failure_threshold>" or
--           "rate <error_rate_threshold> <window_ms> <buckets> <min_calls> <k> <alpha>"
-- ARGV[6]   "<open_timeout_ms> <success_threshold> <half_open_max> <probe_lease_ms> <ttl_ms>"
-- ARGV[7]   ("rate" rule) requests this process shed by client-side throttling since its
--           last call: counted in the window as "<bucket>:t"
-- ARGV[8]   (success/failure without a permit) the closed period its call was admitted in
--           (a closed_us this script returned or published), or "" if unknown: then it
--           counts in whatever closed period is current. A missing breaker (never written,
--           or expired) has no period yet: any result counts.
-- Returns one space-separated string:
--   "<allowed 0|1> <state> <forced|-> <failures> <version> <permit|-> <retry_after_ms>
--    <successes> <probes> <calls> <error_rate> <baseline|-> <throttled> <transitions|->
--    <closed_us>"
--   closed_us: the current closed period (see ARGV[8]); meaningful while closed.
--   version is the server time (us) of the last change: it orders states and events.
--   retry_after_ms while open (not forced): ms until it may turn half-open, measured on the
--   server clock now (rounded up), so each process maps it onto its own clock once.
--   transitions: the state changes THIS call made, in order, comma-separated
--   "<from>><to>@<version>" (e.g. "closed>open@1712345678901234"), so the caller can report
--   them even when it knew nothing of the breaker before the call.
-- Publishes (a JSON object: text, so clients with decode_responses work) on every change:
--   kind "cb", name, event ("transition" or "failures"), from, to, state, failures, forced,
--   version and period (closed_us) (decimal STRINGs: a JSON number would be rounded to
--   100 us by cjson), and
--   half_open_in_ms (while open and not forced: ms until it may turn half-open, measured on
--   the server clock at publish time; -1 otherwise).
-- Expires: every key ttl_ms after the last write (a missing breaker is closed), except
--   that a forced state never expires: it holds until reset().
-- Corrupt state: a key of the wrong type (e.g. a string planted by hand) resets the
--   breaker (every key deleted, logged in the server log) and the call runs on it.

local op, arg = ARGV[1], ARGV[2]
local channel, name = ARGV[3], ARGV[4]
local rule = {}
for w in string.gmatch(ARGV[5], '%S+') do rule[#rule + 1] = w end
local open_timeout_ms, success_threshold, half_open_max, probe_lease_ms, ttl_ms =
  string.match(ARGV[6], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
open_timeout_ms, success_threshold = tonumber(open_timeout_ms), tonumber(success_threshold)
half_open_max, probe_lease_ms, ttl_ms = tonumber(half_open_max), tonumber(probe_lease_ms),
  tonumber(ttl_ms)
local main, probes, window = KEYS[1], KEYS[2], KEYS[3]
local now = now_us()

-- The whole transition, as a function: run again once if a key had the wrong type.
local function run()
  local h = redis.call('HMGET', main, 'state', 'forced', 'failures', 'successes', 'opened_us',
    'version', 'baseline', 'folded', 'closed_us')
  -- A breaker never written (or expired) has no closed period yet.
  local fresh = not h[1]
  -- Values not written by this script (edited by hand) read as the default.
  local state = h[1]
  if state ~= 'open' and state ~= 'half_open' then state = 'closed' end
  local forced = h[2]
  if forced ~= 'open' and forced ~= 'closed' then forced = '' end
  local failures = tonumber(h[3]) or 0
  local successes = tonumber(h[4]) or 0
  local opened = tonumber(h[5]) or 0
  local version = tonumber(h[6]) or 0
  local baseline = tonumber(h[7])
  local folded = tonumber(h[8]) or -1
  local closed_us = tonumber(h[9]) or 0
  local dirty = false
  local calls, rate = 0, 0

  local transitions = {}

  -- ms until an open breaker may turn half-open, on the server clock now (-1: not open, or
  -- forced). Rounded up: a process acting on it is never early.
  local function half_open_in_ms()
    if state ~= 'open' or forced ~= '' then return -1 end
    return math.max(0, math.ceil((opened + open_timeout_ms * 1000 - now) / 1000))
  end

  local function publish(event, from)
    if channel ~= '' then
      redis.call('PUBLISH', channel, cjson.encode({kind = 'cb', name = name, event = event,
        from = from, to = state, state = state, failures = failures,
        version = string.format('%d', version), period = string.format('%d', closed_us),
        forced = forced,
        half_open_in_ms = half_open_in_ms()}))
    end
  end

  local function change()
    -- Strictly increasing even if two changes share a microsecond.
    version = math.max(now, version + 1)
    dirty = true
  end

  local function move(to)
    local from = state
    state = to
    if to == 'open' then opened = now end
    if to ~= 'half_open' then successes = 0 end
    if to == 'closed' then failures = 0 end
    redis.call('DEL', probes)
    change()
    -- Each move to closed starts a new closed period: results of calls admitted in an
    -- earlier one (before a trip) no longer count.
    if to == 'closed' then closed_us = version end
    if from ~= to then
      transitions[#transitions + 1] = from .. '>' .. to .. '@' .. string.format('%d', version)
    end
    publish('transition', from)
  end

  -- The "rate" rule: record one result, drop expired buckets, sum the window,
  -- and fold the last complete bucket into the baseline while closed.
  local shed = tonumber(ARGV[7] or '0') or 0
  local throttled = 0

  local function window_record(failed)
    local threshold, window_ms, buckets, min_calls, k, alpha = tonumber(rule[2]),
      tonumber(rule[3]), tonumber(rule[4]), tonumber(rule[5]), tonumber(rule[6]), tonumber(rule[7])
    local bucket_ms = window_ms / buckets
    -- "%d": concatenating a bucket number >= 1e14 would write "1.7e+14" (never counted).
    local cur = math.floor(now / 1000 / bucket_ms)
    local field = string.format('%d', cur)
    redis.call('HINCRBY', window, field .. ':c', 1)
    if failed then redis.call('HINCRBY', window, field .. ':e', 1) end
    if shed > 0 then redis.call('HINCRBY', window, field .. ':t', string.format('%d', shed)) end
    redis.call('PEXPIRE', window, ttl(window_ms * 2))
    local flat = redis.call('HGETALL', window)
    local errors, prev_c, prev_e = 0, 0, 0
    for i = 1, #flat, 2 do
      local b, kind = string.match(flat[i], '^(%d+):(%a)$')
      b = tonumber(b)
      local v = tonumber(flat[i + 1])
      if b == nil or b <= cur - buckets then
        redis.call('HDEL', window, flat[i])
      else
        if kind == 'c' then calls = calls + v
        elseif kind == 'e' then errors = errors + v
        else throttled = throttled + v end
        if b == cur - 1 then
          if kind == 'c' then prev_c = v elseif kind == 'e' then prev_e = v end
        end
      end
    end
    rate = calls > 0 and errors / calls or 0
    if state == 'closed' and prev_c > 0 and folded < cur - 1 then
      -- Learn only from normal buckets: one above the trip threshold is an
      -- incident, and letting it raise the baseline would hide the incident.
      local r = prev_e / prev_c
      if r <= math.max(threshold, k * (baseline or 0)) then
        baseline = baseline and (baseline * (1 - alpha) + r * alpha) or r
      end
      folded = cur - 1
      dirty = true
    end
    return calls >= min_calls and rate > math.max(threshold, k * (baseline or 0))
  end

  -- Open breakers turn half-open lazily, on the first call after the timeout.
  if forced == '' and state == 'open' and now >= opened + open_timeout_ms * 1000 then
    move('half_open')
  end

  local allowed, permit, retry_ms = 0, '-', 0
  if op == 'attempt' then
    if forced == 'open' then
      allowed = 0
    elseif forced == 'closed' or state == 'closed' then
      allowed = 1
    elseif state == 'open' then
      retry_ms = math.ceil((opened + open_timeout_ms * 1000 - now) / 1000)
    else
      redis.call('ZREMRANGEBYSCORE', probes, '-inf', now)
      local in_flight = redis.call('ZCARD', probes)
      if successes + in_flight < half_open_max then
        redis.call('ZADD', probes, now + probe_lease_ms * 1000, arg)
        redis.call('PEXPIRE', probes, ttl_ms)
        allowed, permit = 1, arg
      else
        local first = redis.call('ZRANGE', probes, 0, 0, 'WITHSCORES')
        retry_ms = first[2] and math.max(1, math.ceil((tonumber(first[2]) - now) / 1000)) or 1
      end
    end
  elseif op == 'success' or op == 'failure' then
    -- A result counts only in the period that admitted its call (as pybreaker and
    -- Resilience4j intend; here it is checked, not assumed): a probe's (it carries its
    -- permit) only while that permit is still held in this half-open period, any other
    -- call's only while closed. So a late result of a call admitted before a trip, or a
    -- probe of an earlier half-open period, changes nothing: it can neither reopen a
    -- half-open breaker (restarting its timeout) nor count as a probe success and close it.
    local failed = op == 'failure'
    if arg ~= '' then
      if state == 'half_open' and redis.call('ZREM', probes, arg) == 1 then
        if failed then
          move('open')
        else
          successes = successes + 1
          change()
          if successes >= success_threshold then move('closed') end
        end
      end
    elseif state == 'closed' and (fresh or ARGV[8] == nil or ARGV[8] == ''
        or tonumber(ARGV[8]) == closed_us) then
      local trip = false
      if rule[1] == 'rate' then
        trip = window_record(failed)
      end
      if failed then
        failures = failures + 1
        change()
        if rule[1] == 'count' then trip = failures >= tonumber(rule[2]) end
        if trip and forced ~= 'closed' then move('open') else publish('failures', state) end
      elseif trip and forced ~= 'closed' then
        move('open')
      elseif failures > 0 then
        failures = 0
        change()
        publish('failures', state)
      end
    end
  elseif op == 'force' then
    if arg == '' then
      redis.call('DEL', main, probes, window)
      local from = state
      state, forced, failures, successes, opened, baseline, folded = 'closed', '', 0, 0, 0, nil, -1
      change()
      closed_us = version     -- a new closed period: calls admitted before it no longer count
      if from ~= 'closed' then
        transitions[#transitions + 1] = from .. '>closed@' .. string.format('%d', version)
      end
      publish('transition', from)
    else
      forced = arg
      if arg == 'open' then move('open') else move('closed') end
    end
  end

  if dirty then
    redis.call('HSET', main, 'state', state, 'forced', forced, 'failures', failures,
      'successes', successes, 'opened_us', string.format('%d', opened),
      'version', string.format('%d', version), 'folded', folded,
      'closed_us', string.format('%d', closed_us))
    if baseline then redis.call('HSET', main, 'baseline', fmt(baseline)) end
    if forced ~= '' then
      -- An operator's forced state holds until reset(), however long: no expiry.
      redis.call('PERSIST', main)
    else
      redis.call('PEXPIRE', main, ttl_ms)
    end
  end

  if state == 'open' and forced == '' and retry_ms == 0 then
    retry_ms = half_open_in_ms()
  end
  if op == 'state' then
    redis.call('ZREMRANGEBYSCORE', probes, '-inf', now)
  end
  return string.format('%d %s %s %d %d %s %d %d %d %d %s %s %d %s %d', allowed, state,
    forced == '' and '-' or forced, failures, version, permit, retry_ms, successes,
    redis.call('ZCARD', probes), calls, fmt(rate), baseline and fmt(baseline) or '-', throttled,
    #transitions > 0 and table.concat(transitions, ',') or '-', closed_us)
end

-- A key of the wrong type under this breaker's name (planted by hand, or written by
-- something else) would fail every call until it expires, if it ever does. Then the
-- breaker is reset: all its keys are deleted (a missing breaker is closed; a partly
-- made change of the failed run is dropped with them) and the call runs again, once.
-- Any other error is raised as it is. This costs nothing on the normal path.
local ok, reply = pcall(run)
if ok then return reply end
local bad = {}
for _, kc in ipairs({{main, 'HEXISTS'}, {probes, 'ZCARD'}, {window, 'HEXISTS'}}) do
  -- An error reply: the key has the wrong type (HEXISTS's field name is any).
  local r = kc[2] == 'ZCARD' and redis.pcall('ZCARD', kc[1]) or redis.pcall('HEXISTS', kc[1], 'x')
  if type(r) == 'table' and r.err then bad[#bad + 1] = kc[1] end
end
if #bad == 0 then error(reply, 0) end
redis.call('DEL', main, probes, window)
redis.log(redis.LOG_WARNING, 'distlb: breaker ' .. name .. ' reset: wrong type at '
  .. table.concat(bad, ' '))
return run()
