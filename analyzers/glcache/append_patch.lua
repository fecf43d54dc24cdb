-- Append one patch to each of several days of a table, atomically (store.Store.append_patches).
-- KEYS: (day key, its lock key) per day; ARGV[1]: TTL in ms, ARGV[1 + i]: the patch of the i-th day.
-- A day takes the patch only while it is cached (its hash has an epoch) or being loaded (its lock is
-- held), so a load never misses a write. Returns each day's patch number (0: neither cached nor loading).
local out = {}
for i = 1, #KEYS, 2 do
  local n = 0
  if redis.call('HEXISTS', KEYS[i], 'epoch') == 1 or redis.call('EXISTS', KEYS[i + 1]) == 1 then
    n = redis.call('HINCRBY', KEYS[i], 'dn', 1)
    redis.call('HSET', KEYS[i], 'd:' .. n, ARGV[1 + #out + 1])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  end
  out[#out + 1] = n
end
return out
