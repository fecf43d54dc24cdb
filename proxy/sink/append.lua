-- The sink's one call a batch: add its statement events to the stream, skip what the marker says is
-- already there, advance the marker, and keep the stream at its cap (counted in statements).
--
-- KEYS: stream, marker.  ARGV: seq0, maxlen, marker ttl, value mode, then
-- - modes 'z' (all values of the batch in one NUL-joined string) and 'a' (one argument per value):
--   number of key sets, per key set its length and names, number of events, per event its key-set
--   index (0-based), then the values;
-- - mode 'p' (bundled entries, proxy.events): events an entry at most, number of events, per event
--   its field count, then per event its packed value (names and values joined with NUL).
-- Returns how many leading events were already in the stream (the marker said so) and were skipped;
-- when its trim took statements a consumer group had not read yet, {skipped, group, count, …} instead
-- (the counts also go to the hash `<stream>:trimmed`, group → total).
local seq0 = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local mode = ARGV[4]
local p = 6
local sets = {}
local bundle = 0
if mode == 'p' then
  bundle = tonumber(ARGV[5])
else
  for i = 1, tonumber(ARGV[5]) do
    local c = tonumber(ARGV[p])
    local t = {}
    for j = 1, c do t[j] = ARGV[p + j] end
    sets[i] = t
    p = p + c + 1
  end
end
local n = tonumber(ARGV[p])
local ids = p
local skip = 0
local done = redis.call('GET', KEYS[2])
if done then
  skip = tonumber(done) - seq0
  if skip >= n then return n end
  if skip < 0 then skip = 0 end
end
local vp = p + n + 1
local s = nil
if mode == 'z' then s = ARGV[vp] end
local sp, last, find, sub = 1, 0, string.find, string.sub
local a, width = nil, -1  -- argument table, reused while the key count stays the same (no table an event)
if s then last = #s + 1 end
local entries, statements = 0, 0  -- what this batch added
if bundle > 0 then  -- up to `bundle` events an entry: Redis's cost an entry is paid once for them all
  local concat = table.concat
  for i = skip + 1, n, bundle do
    local j = math.min(i + bundle - 1, n)
    redis.call('XADD', KEYS[1], '*', 'events',
      concat(ARGV, ',', ids + i, ids + j) .. '\0' .. concat(ARGV, '\0', vp + i - 1, vp + j - 1))
    entries = entries + 1
  end
  statements = n - skip
else
  for i = 1, n do
    local keys = sets[tonumber(ARGV[ids + i]) + 1]
    local c = #keys
    if i > skip and c > 0 then
      if c ~= width then a, width = {}, c end
      if s then
        for j = 1, c do
          local e = find(s, '\0', sp, true) or last
          a[2 * j - 1] = keys[j]
          a[2 * j] = sub(s, sp, e - 1)
          sp = e + 1
        end
      else
        for j = 1, c do
          a[2 * j - 1] = keys[j]
          a[2 * j] = ARGV[vp]
          vp = vp + 1
        end
      end
      redis.call('XADD', KEYS[1], '*', unpack(a))
      entries = entries + 1
    elseif s then
      for _ = 1, c do sp = (find(s, '\0', sp, true) or last) + 1 end
    else
      vp = vp + c
    end
  end
end
redis.call('SET', KEYS[2], string.format('%d', seq0 + n), 'EX', ARGV[3])
if bundle == 0 then statements = entries end
-- The cap (maxlen, 0: none) counts statements, and a bundled entry holds several: `<stream>:held` keeps
-- the count (and the entries it saw; `fasterdata top` shows it). A length it did not expect (the stream
-- trimmed or deleted by hand, a proxy of an older release) rescales the count by its statements an entry.
-- pcall: an ACL may refuse the hash (then each entry counts as one statement).
local hk = KEYS[1] .. ':held'
local before = redis.call('XLEN', KEYS[1])
local okh, h = pcall(redis.call, 'HMGET', hk, 'statements', 'entries')
if not okh then h = {} end
local held, seen, prior = tonumber(h[1]), tonumber(h[2]), before - entries
if held and seen ~= prior then held = seen and seen > 0 and math.floor(held * prior / seen) or prior end
held = math.max((held or prior) + statements, before)
local counts, oldest, cut, trimmed = {}, {}, 0, 0  -- the oldest entries' statements and ids; how many go
if maxlen > 0 and held > maxlen and held == before then  -- one statement an entry: nothing to look at
  cut, trimmed = held - maxlen, held - maxlen
elseif maxlen > 0 and held > maxlen then
  local excess, last = held - maxlen, '-'
  while trimmed < excess do
    local chunk = redis.call('XRANGE', KEYS[1], last, '+', 'COUNT', 100)
    if #chunk == 0 then  -- the count was too high: it is now exact
      held = trimmed
      excess = held - maxlen
      trimmed, cut = 0, 0
      while cut < #counts and trimmed < excess do cut = cut + 1; trimmed = trimmed + counts[cut] end
      break
    end
    for _, e in ipairs(chunk) do
      local f, c = e[2], 1
      if #f == 2 and f[1] == 'events' then c = select(2, string.gsub(string.match(f[2], '^[^%z]*'), ',', '')) + 1 end
      cut = cut + 1
      counts[cut], oldest[cut] = c, e[1]
      trimmed = trimmed + c
      if trimmed >= excess then break end
    end
    last = '(' .. oldest[cut]
  end
end
local lost = nil
if cut > 0 then
  -- What the trim takes before a consumer group read it: a group's lag (entries-added - entries-read)
  -- counts the entries it has still to read, the newest ones. The lag is read before the trim: after it,
  -- Redis may estimate the lag from what is left. pcall: an ACL may refuse XINFO (nothing is counted then).
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if oldest[cut] then
    local ms, sq = string.match(oldest[cut], '^(%d+)-(%d+)$')  -- MINID keeps what follows the last to go
    redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. string.format('%d', tonumber(sq) + 1))
  else
    redis.call('XTRIM', KEYS[1], 'MAXLEN', before - cut)
  end
  for _, g in ipairs(ok and groups or {}) do
    local name, unread = nil, nil
    for k = 1, #g, 2 do
      if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'lag' then unread = tonumber(g[k + 1]) end
    end
    local took = 0
    if name and unread then
      local first = math.max(1, before - unread + 1)  -- this group's first unread entry
      if oldest[cut] then
        for k = first, cut do took = took + counts[k] end
      else
        took = math.max(0, cut - first + 1)  -- one statement an entry
      end
    end
    if took > 0 then
      pcall(redis.call, 'HINCRBY', KEYS[1] .. ':trimmed', name, took)  -- an ACL may refuse it: still reported
      lost = lost or {skip}
      lost[#lost + 1] = name
      lost[#lost + 1] = took
    end
  end
end
if okh then pcall(redis.call, 'HSET', hk, 'statements', held - trimmed, 'entries', before - cut) end
return lost or skip
