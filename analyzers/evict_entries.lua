-- The entry cap's eviction (retention.Sweeper.evict_entries): each fp|db|app victim re-checked, then removed.
-- KEYS[1] stats:entries, KEYS[2..4] stats:top:time|calls|errors, KEYS[5] stats:last, KEYS[6] seen:apps, then the
-- q, members, fp and seen keys the victims name (declared)
-- ARGV: cap, q prefix, seen prefix, members prefix, fp prefix, then per victim: fp|db|app, the score it was chosen with
local entries, cap = KEYS[1], tonumber(ARGV[1])
local qp, sp, mp, fpp = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local evicted = {}
for i = 6, #ARGV, 2 do
  local entry, chosen = ARGV[i], tonumber(ARGV[i+1])
  local score = tonumber(redis.call('ZSCORE', entries, entry))
  if score and score <= chosen and redis.call('ZCARD', entries) > cap then
    local fp, member = string.match(entry, '^([^|]*)|(.*)$')
    local app = string.match(member, '^[^|]*|(.*)$')
    redis.call('DEL', qp .. entry)
    for k = 2, 4 do redis.call('ZREM', KEYS[k], entry) end
    redis.call('ZREM', entries, entry)
    redis.call('SREM', mp .. fp, member)
    local others = redis.call('SMEMBERS', mp .. fp)
    local still = false
    for _, m in ipairs(others) do
      if string.match(m, '^[^|]*|(.*)$') == app then still = true end
    end
    if app and not still then
      redis.call('SREM', sp .. app, fp)
      if redis.call('EXISTS', sp .. app) == 0 then redis.call('HDEL', KEYS[6], app) end
    end
    if #others == 0 then
      redis.call('DEL', fpp .. fp)
      redis.call('ZREM', KEYS[5], fp)
    end
    evicted[#evicted + 1] = entry
  end
end
return evicted
