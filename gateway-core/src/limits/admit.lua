-- One rate-limit decision for one request, atomically, on Redis' own clock.
-- The arithmetic mirrors gateway-core/src/limits/gcra.rs and local.rs.
--
-- KEYS: 1 tenant rpm, 2 user rpm, 3 tenant tpm, 4 user tpm,
--       5 tenant tpd, 6 user tpd, 7 tenant streams (sorted set of leases)
-- ARGV: 1..8  interval_us and capacity of the four GCRA buckets (rpm t/u, tpm t/u),
--             interval 0 = not configured
--       9, 10 tenant and user tokens per day (0 = not configured)
--       11 tokens to reserve
--       12 max streams (0 = no slot wanted), 13 lease member, 14 lease ms
-- Returns: {day, then for each of the 7 checks: state (-1 off, 0 refused,
--          1 allowed), retry_us, remaining, reset_us}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local day = math.floor(tonumber(t[1]) / 86400)
local cost = tonumber(ARGV[11])
local out = {day}
local writes = {}
local ok = true

local function push(state, retry, remaining, reset)
  out[#out + 1] = state
  out[#out + 1] = math.ceil(retry)
  out[#out + 1] = math.floor(remaining)
  out[#out + 1] = math.ceil(reset)
  if state == 0 then ok = false end
end

local function gcra(i, interval, capacity, units)
  if interval <= 0 then return push(-1, 0, 0, 0) end
  units = math.min(units, capacity)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local base = math.max(tat, now)
  local span = capacity * interval
  local new = base + units * interval
  local allow_at = new - span
  if allow_at - now > 1 then
    return push(0, allow_at - now, math.max(0, math.floor((now + span - base) / interval + 1e-6)), base - now)
  end
  writes[#writes + 1] = {'gcra', KEYS[i], new}
  push(1, 0, math.floor((now - allow_at) / interval + 1e-6), new - now)
end

local function daily(i, limit)
  if limit <= 0 then return push(-1, 0, 0, 0) end
  local units = math.min(cost, limit)
  local v = redis.call('HMGET', KEYS[i], 'd', 'u')
  local used = 0
  if tonumber(v[1]) == day then used = tonumber(v[2]) or 0 end
  local reset = (day + 1) * 86400000000 - now
  if used + units > limit then return push(0, reset, math.max(0, limit - used), reset) end
  writes[#writes + 1] = {'daily', KEYS[i], used + units, reset}
  push(1, 0, limit - used - units, reset)
end

gcra(1, tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
gcra(2, tonumber(ARGV[3]), tonumber(ARGV[4]), 1)
gcra(3, tonumber(ARGV[5]), tonumber(ARGV[6]), cost)
gcra(4, tonumber(ARGV[7]), tonumber(ARGV[8]), cost)
daily(5, tonumber(ARGV[9]))
daily(6, tonumber(ARGV[10]))

local max_streams = tonumber(ARGV[12])
local now_ms = math.floor(now / 1000)
if max_streams > 0 then
  -- Leases of crashed replicas expire here.
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now_ms)
  local open = redis.call('ZCARD', KEYS[7])
  if open >= max_streams then
    push(0, 1000000, 0, 0)
  else
    push(1, 0, max_streams - open - 1, 0)
  end
else
  push(-1, 0, 0, 0)
end

if ok then
  for _, w in ipairs(writes) do
    if w[1] == 'gcra' then
      redis.call('SET', w[2], string.format('%.17g', w[3]), 'PX', math.ceil((w[3] - now) / 1000) + 1000)
    else
      redis.call('HSET', w[2], 'd', day, 'u', w[3])
      redis.call('PEXPIRE', w[2], math.ceil(w[4] / 1000) + 86400000)
    end
  end
  if max_streams > 0 then
    local lease = tonumber(ARGV[14])
    redis.call('ZADD', KEYS[7], now_ms + lease, ARGV[13])
    redis.call('PEXPIRE', KEYS[7], 2 * lease)
  end
end
return out
