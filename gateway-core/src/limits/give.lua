-- Gives back what a replica did not use (a positive amount: an unused
-- slice, the unused part of a token reservation) or charges what its requests
-- used beyond their reservations (negative), and frees a stream slot.
-- Mirrors Gcra::settle; a bucket never holds more than its capacity.
--
-- KEYS: 1 tenant rpm, 2 user rpm, 3 tenant tpm, 4 user tpm, 5 tenant tpd,
--       6 user tpd, 7 tenant budget, 8 user budget, 9 team budget,
--       10 key budget, 11 tenant streams
-- ARGV: for each bucket three numbers: interval_us or windowed limit (0 = skip),
--       amount, and the window a windowed amount was taken in (a windowed
--       amount of an earlier window is dropped: that window is over);
--       31 stream slot member ('' = none)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, 4 do
  local interval = tonumber(ARGV[3 * i - 2])
  local amount = tonumber(ARGV[3 * i - 1])
  if interval > 0 and amount ~= 0 then
    local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
    local new = tat - amount * interval
    if new > now then
      redis.call('SET', KEYS[i], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
for i = 5, 10 do
  local limit = tonumber(ARGV[3 * i - 2])
  local amount = tonumber(ARGV[3 * i - 1])
  local w = tonumber(ARGV[3 * i])
  if limit > 0 and amount ~= 0 then
    local v = redis.call('HMGET', KEYS[i], 'd', 'u')
    if tonumber(v[1]) == w then
      redis.call('HSET', KEYS[i], 'u', string.format('%d', math.max(0, (tonumber(v[2]) or 0) - amount)))
    end
  end
end
if ARGV[31] ~= '' then
  redis.call('ZREM', KEYS[11], ARGV[31])
end
return 1
