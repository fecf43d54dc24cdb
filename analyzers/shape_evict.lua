-- The transaction-shape cap (drilldown.py): the least recently seen shapes beyond it go, with their links.
-- KEYS[1] txshapes (the index), then every key the victims name (declared)
-- ARGV: cap, shape prefix, shapes-of prefix, then per victim: shape, the score it was chosen with
local index, cap = KEYS[1], tonumber(ARGV[1])
local hp, tp = ARGV[2], ARGV[3]
local removed = {}
for i = 4, #ARGV, 2 do
  local shape, chosen = ARGV[i], tonumber(ARGV[i+1])
  local score = tonumber(redis.call('ZSCORE', index, shape))
  if score and score <= chosen and redis.call('ZCARD', index) > cap then
    local fps = redis.call('HGET', hp .. shape, 'fps')
    if fps then
      for fp in string.gmatch(fps, '[^,]+') do redis.call('SREM', tp .. fp, shape) end
    end
    redis.call('DEL', hp .. shape)
    redis.call('ZREM', index, shape)
    removed[#removed + 1] = shape
  end
end
return removed
