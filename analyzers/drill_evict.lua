-- The drill sweep (drilldown.py): a fingerprint's drill-down keys go once its stats have gone.
-- KEYS[1] stats:last, KEYS[2] samples:fps (the drill index), then every key the victims name (declared)
-- ARGV: users prefix, slow prefix, recent prefix, plan prefix, shapes-of prefix, series prefix, cutoff (epoch s,
-- 0: none), then
-- per victim: fp, the index score it was chosen with
local last, index = KEYS[1], KEYS[2]
local up, sp, rp, pp, tp, sr, cutoff = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local removed = {}
for i = 8, #ARGV, 2 do
  local fp, chosen = ARGV[i], tonumber(ARGV[i+1])
  local score = tonumber(redis.call('ZSCORE', index, fp))
  local gone = not redis.call('ZSCORE', last, fp)
  if score and score <= chosen and (gone or (cutoff > 0 and score <= cutoff)) then
    redis.call('DEL', up .. fp, sp .. fp, rp .. fp, pp .. fp, tp .. fp, sr .. fp)
    redis.call('ZREM', index, fp)
    removed[#removed + 1] = fp
  end
end
return removed
