-- Read-only scans of one shard's performance summary for the read model (readmodel.py): what a sort or a
-- filter needs of every entry, in one call instead of one command an entry.
-- KEYS[1] the shard's stats:top:time (its members are the entries; it also routes the call to the shard's slot)
-- ARGV[1] 'fields': ARGV[2] the stats:q prefix, ARGV[3..] field names
--   → {member, "v1,v2,…", …} (an absent field reads as an empty value)
-- ARGV[1] 'p99': the entries' quantile from their histograms (below)
-- ARGV[1] 'user': ARGV[2] the stats:u prefix, ARGV[3] the user, KEYS[2] stats:last
--   → {"fp|db|app", "calls:total_us:rows:errors:max_us", …} of that user's rows
local out = {}
if ARGV[1] == 'fields' then
  local prefix = ARGV[2]
  local fields = {}
  for k = 3, #ARGV do fields[#fields + 1] = ARGV[k] end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local values = redis.call('HMGET', prefix .. member, unpack(fields))
    for k = 1, #values do if not values[k] then values[k] = '' end end
    out[#out + 1] = member
    out[#out + 1] = table.concat(values, ',')
  end
elseif ARGV[1] == 'p99' then
  -- ARGV[2] the stats:q prefix, ARGV[3] the quantile, ARGV[4..] the buckets' upper bounds (µs), the last one +Inf
  -- → {member, quantile (µs), …}: interpolated inside its bucket, kept within the entry's min and max
  local prefix, q = ARGV[2], tonumber(ARGV[3])
  local bounds, fields = {0}, {}
  for k = 4, #ARGV do bounds[#bounds + 1] = tonumber(ARGV[k]) end
  for k = 0, #ARGV - 3 do fields[#fields + 1] = 'h' .. k end
  fields[#fields + 1] = 'min_us'
  fields[#fields + 1] = 'max_us'
  local nb = #ARGV - 2
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local v = redis.call('HMGET', prefix .. member, unpack(fields))
    local total = 0
    for k = 1, nb do total = total + (tonumber(v[k]) or 0) end
    local lo, hi = tonumber(v[nb + 1]), tonumber(v[nb + 2])
    local value = 0
    if total > 0 then
      local rank, acc = q * total, 0
      for k = 1, nb do
        local n = tonumber(v[k]) or 0
        if n > 0 and acc + n >= rank then
          local a, b = bounds[k], bounds[k + 1] or hi or bounds[k]
          if hi and b > hi then b = hi end
          if lo and a < lo then a = lo end
          if b > a then value = a + (b - a) * ((rank - acc) / n) else value = b end
          break
        end
        acc = acc + n
      end
    end
    out[#out + 1] = member
    out[#out + 1] = tostring(value)
  end
elseif ARGV[1] == 'user' then
  local prefix, suffix = ARGV[2], '|' .. ARGV[3]
  local n = #suffix
  for _, fp in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local flat = redis.call('HGETALL', prefix .. fp)
    for k = 1, #flat, 2 do
      local field = flat[k]
      if string.sub(field, -n) == suffix then
        out[#out + 1] = fp .. '|' .. string.sub(field, 1, -n - 1)
        out[#out + 1] = flat[k + 1]
      end
    end
  end
end
return out
