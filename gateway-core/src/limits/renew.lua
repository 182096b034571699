-- Extends the stream leases this replica still holds (the ones it lost
-- after a stall stay lost: ZADD XX only updates).
-- KEYS: 1 tenant streams. ARGV: 1 lease ms, 2.. members.
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
