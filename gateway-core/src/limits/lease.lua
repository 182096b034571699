-- Takes units of a tenant's (and a user's) limits for one replica,
-- atomically, on Redis' own clock: a request's own units (need = want = its
-- cost), or a slice ahead of need that the replica admits requests from
-- without calling Redis and gives back when unused (give.lua). A slice is
-- taken from the shared bucket like a request of that many units, so the
-- replicas together never pass more than one shared bucket would. The GCRA
-- arithmetic mirrors gateway-core/src/limits/gcra.rs and local.rs.
--
-- KEYS: 1 tenant rpm, 2 user rpm, 3 tenant tpm, 4 user tpm, 5 tenant tpd,
--       6 user tpd, 7 tenant streams (sorted set of stream slots)
-- ARGV: for each of the six buckets, four numbers:
--         GCRA (1-4): interval_us (0 = not configured), capacity, need, want
--         daily (5-6): limit (0 = not configured), 0, need, want
--       `need` units must be granted or nothing is taken; up to `want` are
--       granted when the bucket has them.
--       25 max streams (0 = no slot wanted), 26 slot member, 27 slot lease ms
-- Returns: {now_us, day, then for each bucket and the stream slot: state
--          (-1 off, 0 refused, 1 granted), granted, retry_us, remaining, reset_us}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local day = math.floor(tonumber(t[1]) / 86400)
local out = {now, day}
local writes = {}
local ok = true

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

local function daily(i, limit, need, want)
  if limit <= 0 then return push(-1, 0, 0, 0, 0) end
  need = math.min(need, limit)
  want = math.min(math.max(want, need), limit)
  local v = redis.call('HMGET', KEYS[i], 'd', 'u')
  local used = 0
  if tonumber(v[1]) == day then used = tonumber(v[2]) or 0 end
  local reset = (day + 1) * 86400000000 - now
  if used + need > limit then return push(0, 0, reset, math.max(0, limit - used), reset) end
  local granted = math.max(need, math.min(want, limit - used))
  if granted > 0 then writes[#writes + 1] = {'daily', KEYS[i], used + granted, reset} end
  push(1, granted, 0, limit - used - granted, reset)
end

for i = 1, 4 do
  local a = 4 * (i - 1)
  gcra(i, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
end
for i = 5, 6 do
  local a = 4 * (i - 1)
  daily(i, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
end

local max_streams = tonumber(ARGV[25])
local now_ms = math.floor(now / 1000)
if max_streams > 0 then
  -- Slots of crashed replicas expire here.
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now_ms)
  local open = redis.call('ZCARD', KEYS[7])
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
    local lease = tonumber(ARGV[27])
    redis.call('ZADD', KEYS[7], now_ms + lease, ARGV[26])
    redis.call('PEXPIRE', KEYS[7], 2 * lease)
  end
  for _, w in ipairs(writes) do
    if w[1] == 'gcra' then
      redis.call('SET', w[2], string.format('%.17g', w[3]), 'PX', math.ceil((w[3] - now) / 1000) + 1000)
    else
      redis.call('HSET', w[2], 'd', day, 'u', w[3])
      redis.call('PEXPIRE', w[2], math.ceil(w[4] / 1000) + 86400000)
    end
  end
else
  -- A refusal takes nothing from any bucket.
  for i = 3, #out, 5 do out[i + 1] = 0 end
end
return out
