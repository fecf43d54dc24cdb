-- Sets the group's claim floor (ms) to a claimer's min-idle when that is lower, or when the floor has
-- lapsed: a floor outlives its setter by PX, which the setter renews at every claim pass (atomic.claim_floor).
-- KEYS[1] the floor; ARGV[1] the claimer's min-idle (ms), ARGV[2] the floor's lifetime (ms)
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(ARGV[1]) <= tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return redis.call('GET', KEYS[1])
