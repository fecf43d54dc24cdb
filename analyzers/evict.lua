-- The fingerprint cap's eviction (retention.Sweeper.evict): each victim re-checked, then removed whole.
-- KEYS[1] stats:last, KEYS[2..4] stats:top:time|calls|errors, KEYS[5] stats:entries, then every key the victims
-- name (declared)
-- ARGV: cap (0: none), age cutoff (epoch s, 0: none), q prefix, seen prefix, fp prefix, members prefix, then per
-- victim: fp, the score it was chosen with, n, n members (<db>|<app>)
local last, cap, cutoff = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local qp, sp, fpp, mp = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local evicted = {}
local i = 7
while i <= #ARGV do
  local fp, chosen, n = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  local declared = {}
  for k = i + 3, i + 2 + n do declared[ARGV[k]] = true end
  i = i + 3 + n
  local score = tonumber(redis.call('ZSCORE', last, fp))
  local due = score and score <= chosen
    and ((cap > 0 and redis.call('ZCARD', last) > cap) or (cutoff > 0 and score <= cutoff))
  local members = due and redis.call('SMEMBERS', mp .. fp) or {}
  for _, m in ipairs(members) do
    if not declared[m] then due = false end  -- a member written since: next sweep
  end
  if due then
    for _, m in ipairs(members) do
      local member = fp .. '|' .. m
      redis.call('DEL', qp .. member)
      redis.call('ZREM', KEYS[2], member)
      redis.call('ZREM', KEYS[3], member)
      redis.call('ZREM', KEYS[4], member)
      redis.call('ZREM', KEYS[5], member)
      local app = string.match(m, '^[^|]*|(.*)$')
      if app then redis.call('SREM', sp .. app, fp) end
    end
    redis.call('DEL', mp .. fp, fpp .. fp)
    redis.call('ZREM', last, fp)
    evicted[#evicted + 1] = fp
  end
end
return evicted
