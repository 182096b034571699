-- Takes units of a tenant's (and a user's, team's, key's) limits for one replica,
-- atomically, on Redis' own clock: a request's own units (need = want = its
-- cost), or a slice ahead of need that the replica admits requests from
-- without calling Redis and gives back when unused (give.lua). A slice is
-- taken from the shared bucket like a request of that many units, so the
-- replicas together never pass more than one shared bucket would. The GCRA
-- arithmetic mirrors gateway-core/src/limits/gcra.rs and local.rs.
--
-- KEYS: 1 tenant rpm, 2 user rpm, 3 tenant tpm, 4 user tpm, 5 tenant tpd,
--       6 user tpd, 7 tenant budget, 8 user budget, 9 team budget,
--       10 key budget, 11 tenant streams (sorted set of stream slots)
-- ARGV: for each of the ten buckets, six numbers:
--         GCRA (1-4): interval_us (0 = not configured), capacity, need, want, 0, 0
--         windowed (5-10): limit (0 = not configured), period (0 = UTC day,
--         1 = UTC month, 2 = fixed), need, want, and for a fixed period the
--         first window's start (epoch seconds) and the windows' length
--         (seconds); budgets count nano-units, exact while below 2^53 (the
--         CRD caps a budget at 9e15)
--       `need` units must be granted or nothing is taken; up to `want` are
--       granted when the bucket has them.
--       61 max streams (0 = no slot wanted), 62 slot member, 63 slot lease ms
-- Returns: {now_us, day, then for each bucket and the stream slot: state
--          (-1 off, 0 refused, 1 granted), granted, retry_us, remaining, reset_us}
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local day = math.floor(sec / 86400)
local out = {now, day}
local writes = {}
local ok = true

-- Year and month of day number `d` (H. Hinnant's civil_from_days), and the
-- day number of the first of a month: the same as gateway-core/src/limits/period.rs.
local function civil(d)
  local z = d + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function first_of_month(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + math.floor((153 * mp + 2) / 5)
  return era * 146097 + doe - 719468
end

-- The window of `period` holding now, and microseconds until it ends: the
-- day number, the month number, or a fixed window's first second (as
-- gateway-core/src/limits/period.rs numbers them).
local function window(period, start, length)
  if period == 0 then return day, (day + 1) * 86400000000 - now end
  if period == 2 then
    local w = start + math.floor((sec - start) / length) * length
    return w, (w + length) * 1000000 - now
  end
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return y * 12 + m - 1, first_of_month(ny, nm) * 86400000000 - now
end

local function push(state, granted, retry, remaining, reset)
  out[#out + 1] = state
  out[#out + 1] = granted
  out[#out + 1] = math.ceil(retry)
  out[#out + 1] = math.floor(remaining)
  out[#out + 1] = math.ceil(reset)
  if state == 0 then ok = false end
end

local function gcra(i, interval, capacity, need, want)
  if interval <= 0 then return push(-1, 0, 0, 0, 0) end
  need = math.min(need, capacity)
  want = math.min(math.max(want, need), capacity)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local base = math.max(tat, now)
  local span = capacity * interval
  local available = math.max(0, math.floor((now + span - base) / interval + 1e-6))
  local allow_at = base + need * interval - span
  if allow_at - now > 1 then
    return push(0, 0, allow_at - now, available, base - now)
  end
  local granted = math.max(need, math.min(want, available))
  local new = base + granted * interval
  if granted > 0 then writes[#writes + 1] = {'gcra', KEYS[i], new} end
  push(1, granted, 0, math.max(0, available - granted), new - now)
end

local function windowed(i, limit, period, need, want, start, length)
  if limit <= 0 then return push(-1, 0, 0, 0, 0) end
  need = math.min(need, limit)
  want = math.min(math.max(want, need), limit)
  local w, reset = window(period, start, length)
  local v = redis.call('HMGET', KEYS[i], 'd', 'u')
  local used = 0
  if tonumber(v[1]) == w then used = tonumber(v[2]) or 0 end
  if used + need > limit then return push(0, 0, reset, math.max(0, limit - used), reset) end
  local granted = math.max(need, math.min(want, limit - used))
  if granted > 0 then writes[#writes + 1] = {'window', KEYS[i], used + granted, reset, w} end
  push(1, granted, 0, limit - used - granted, reset)
end

for i = 1, 4 do
  local a = 6 * (i - 1)
  gcra(i, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
end
for i = 5, 10 do
  local a = 6 * (i - 1)
  windowed(i, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
    tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]))
end

local max_streams = tonumber(ARGV[61])
local now_ms = math.floor(now / 1000)
if max_streams > 0 then
  -- Slots of crashed replicas expire here.
  redis.call('ZREMRANGEBYSCORE', KEYS[11], '-inf', now_ms)
  local open = redis.call('ZCARD', KEYS[11])
  if open >= max_streams then
    push(0, 0, 1000000, 0, 0)
  else
    push(1, 1, 0, max_streams - open - 1, 0)
  end
else
  push(-1, 0, 0, 0, 0)
end

if ok then
  if max_streams > 0 then
    local lease = tonumber(ARGV[63])
    redis.call('ZADD', KEYS[11], now_ms + lease, ARGV[62])
    redis.call('PEXPIRE', KEYS[11], 2 * lease)
  end
  for _, w in ipairs(writes) do
    if w[1] == 'gcra' then
      redis.call('SET', w[2], string.format('%.17g', w[3]), 'PX', math.ceil((w[3] - now) / 1000) + 1000)
    else
      redis.call('HSET', w[2], 'd', w[5], 'u', string.format('%d', w[3]))
      redis.call('PEXPIRE', w[2], math.ceil(w[4] / 1000) + 86400000)
    end
  end
else
  -- A refusal takes nothing from any bucket.
  for i = 3, #out, 5 do out[i + 1] = 0 end
end
return out
