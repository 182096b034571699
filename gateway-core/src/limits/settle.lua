-- Replaces a token reservation by the real usage and frees a stream lease.
-- Mirrors Gcra::settle and LocalStore::settle.
--
-- KEYS: 1 tenant tpm, 2 user tpm, 3 tenant tpd, 4 user tpd, 5 tenant streams
-- ARGV: 1..4 interval_us and capacity of the tpm buckets (t, u; interval 0 = off)
--       5, 6 tenant and user tokens per day (0 = off)
--       7 reserved, 8 actual, 9 day of the reservation, 10 lease member ('' = none)
local reserved = tonumber(ARGV[7])
local actual = tonumber(ARGV[8])
if reserved ~= actual then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  for i = 1, 2 do
    local interval = tonumber(ARGV[2 * i - 1])
    if interval > 0 then
      local capacity = tonumber(ARGV[2 * i])
      local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
      local new = tat + (actual - math.min(reserved, capacity)) * interval
      if new > now then
        redis.call('SET', KEYS[i], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1000)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
  local day = tonumber(ARGV[9])
  for i = 3, 4 do
    local limit = tonumber(ARGV[i + 2])
    if limit > 0 then
      local v = redis.call('HMGET', KEYS[i], 'd', 'u')
      if tonumber(v[1]) == day then
        local used = math.max(0, (tonumber(v[2]) or 0) + actual - math.min(reserved, limit))
        redis.call('HSET', KEYS[i], 'u', used)
      end
    end
  end
end
if ARGV[10] ~= '' then
  redis.call('ZREM', KEYS[5], ARGV[10])
end
return 1
