-- A batch's commit (atomic.py): check that its entries are still ours, XACK them, apply its writes.
--
-- The writes are ops, declared in ops.py: each op's arguments, which of them are keys, and its tail. Between
-- `--@ops` and `--@end` below, each `--- op <code>` section is one op's handler. When the script is loaded,
-- ops.py makes the sections the branches of `run`, the dispatcher, each followed by the step to the next op
-- that the declaration gives; loading fails unless the sections and the declaration name the same ops.
-- A handler sees a[i], its opcode, a[i+1]… its fixed arguments, and for an op with a tail a[j]…a[last].

-- outcome values: 'committed', 'committed;a-b,c-d' (statements a…b sent early, then undone by
-- ROLLBACK TO SAVEPOINT), 'rolled_back' …
local function split_outcome(v)
  if not v then return nil, '' end
  local base, undone = string.match(v, '^([^;]*);?(.*)$')
  return base, undone
end
local function is_undone(undone, seq)
  if undone == '' or not seq then return false end
  for lo, hi in string.gmatch(undone, '(%d+)-(%d+)') do
    if seq >= tonumber(lo) and seq <= tonumber(hi) then return true end
  end
  return false
end
local undescribed = {}  -- fingerprints whose description (stats:fp) is gone: evicted while a worker knew them
local caps = {}  -- business event stream → its MAXLEN: trimmed once at the end, not at every XADD
local noted = {}  -- what `N` ops that ran report back (a finding only Redis could decide, such as a new shape)
local run

-- G and GN: a statement of a transaction still open; its children run if the transaction committed (and
-- did not undo it), are parked if its outcome is not known yet, and are dropped otherwise
local function parked(a, i, j, last, seq)
  local outcome, undone = split_outcome(redis.call('GET', a[i+1]))
  if outcome == 'committed' then
    if not is_undone(undone, seq) then run(a, j, last) end
  elseif not outcome then
    local sub = {}
    for k = j, last do sub[#sub + 1] = a[k] end
    -- the number travels as a second msgpack object: a script that knows only one still replays it
    redis.call('RPUSH', a[i+2], seq and cmsgpack.pack(sub, seq) or cmsgpack.pack(sub))
    redis.call('EXPIRE', a[i+2], a[i+3])
  end
end

--@ops
--- op H
redis.call('HINCRBY', a[i+1], a[i+2], a[i+3])
--- op Z
redis.call('ZINCRBY', a[i+1], a[i+3], a[i+2])
--- op MAX
local cur = redis.call('HGET', a[i+1], a[i+2])
if (not cur) or tonumber(a[i+3]) > tonumber(cur) then redis.call('HSET', a[i+1], a[i+2], a[i+3]) end
--- op MIN
local cur = redis.call('HGET', a[i+1], a[i+2])
if (not cur) or tonumber(a[i+3]) < tonumber(cur) then redis.call('HSET', a[i+1], a[i+2], a[i+3]) end
--- op HF
redis.call('HINCRBYFLOAT', a[i+1], a[i+2], a[i+3])
--- op NX
redis.call('HSETNX', a[i+1], a[i+2], a[i+3])
--- op HS
redis.call('HSET', a[i+1], a[i+2], a[i+3])
--- op S
redis.call('SADD', a[i+1], a[i+2])
--- op ZGT
redis.call('ZADD', a[i+1], 'GT', a[i+3], a[i+2])
--- op UROW
local cur = redis.call('HGET', a[i+1], a[i+2])
local c, u, r, e, m = 0, 0, 0, 0, 0
if cur then
  local c0, u0, r0, e0, m0 = string.match(cur, '^(%d+):(%d+):(%d+):(%d+):(%d+)$')
  if c0 then c, u, r, e, m = tonumber(c0), tonumber(u0), tonumber(r0), tonumber(e0), tonumber(m0) end
end
local top = tonumber(a[i+7])
if m > top then top = m end
redis.call('HSET', a[i+1], a[i+2], string.format('%d:%d:%d:%d:%d', c + tonumber(a[i+3]), u + tonumber(a[i+4]),
  r + tonumber(a[i+5]), e + tonumber(a[i+6]), top))
--- op TS
local slot = tostring(tonumber(a[i+3]) % tonumber(a[i+2]))
local cur = redis.call('HGET', a[i+1], slot)
local c, u, e = 0, 0, 0
if cur then
  local m, c0, u0, e0 = string.match(cur, '^(%d+):(%d+):(%d+):(%d+)$')
  if m == a[i+3] then c, u, e = tonumber(c0), tonumber(u0), tonumber(e0) end
end
redis.call('HSET', a[i+1], slot, string.format('%s:%d:%d:%d', a[i+3], c + tonumber(a[i+4]), u + tonumber(a[i+5]),
  e + tonumber(a[i+6])))
--- op D
redis.call('SADD', a[i+1], a[i+4])
redis.call('HSET', a[i+2], a[i+3], redis.call('SCARD', a[i+1]))
--- op DS
for k = j, last, 1000 do
  redis.call('SADD', a[i+1], unpack(a, k, math.min(k + 999, last)))
end
redis.call('HSET', a[i+2], a[i+3], redis.call('SCARD', a[i+1]))
--- op E
redis.call('EXPIRE', a[i+1], a[i+2])
--- op EA
redis.call('EXPIREAT', a[i+1], a[i+2])
--- op L
-- a fingerprint's statements in this batch: last seen (for the cap) and its fp|db|app members; a
-- member new to the set while the description is missing means the fingerprint was evicted and is back;
-- each fp|db|app entry's last-seen second goes to the entries index (the entry cap)
local n, added = tonumber(a[i+7]), 0
redis.call('ZADD', a[i+1], 'GT', a[i+3], a[i+2])
for k = j, j + n - 1, 1000 do
  added = added + redis.call('SADD', a[i+5], unpack(a, k, math.min(k + 999, j + n - 1)))
end
for k = j, j + n - 1 do redis.call('ZADD', a[i+6], 'GT', a[k + n], a[i+2] .. '|' .. a[k]) end
if added > 0 and redis.call('EXISTS', a[i+4]) == 0 then undescribed[#undescribed + 1] = a[i+2] end
--- op X
redis.call('XADD', a[i+1], 'MAXLEN', '~', a[i+2], '*', unpack(a, j, last))
--- op ZKEEP
for k = j, last, 2 do redis.call('ZADD', a[i+1], a[k], a[k+1]) end
redis.call('ZREMRANGEBYRANK', a[i+1], 0, -(tonumber(a[i+2]) + 1))
--- op LKEEP
redis.call('LPUSH', a[i+1], unpack(a, j, last))
redis.call('LTRIM', a[i+1], 0, tonumber(a[i+2]) - 1)
redis.call('ZADD', a[i+3], 'GT', a[i+5], a[i+4])
--- op B
local key, ts, sid, txid, app, fp, comment = a[i+1], a[i+3], a[i+4], a[i+5], a[i+6], a[i+7], a[i+8]
caps[key] = a[i+2]
for k = j, last, 5 do
  if comment == '' and a[k+3] == '' and a[k+4] == '' then
    redis.call('XADD', key, '*', 'rule', a[k], 'value', a[k+1], 'labels', a[k+2], 'ts', ts, 'sid', sid,
      'txid', txid, 'app', app, 'fp', fp)
  else
    local f = {'rule', a[k], 'value', a[k+1], 'labels', a[k+2], 'ts', ts, 'sid', sid, 'txid', txid, 'app', app,
      'fp', fp}
    if comment ~= '' then f[#f + 1] = 'comment'; f[#f + 1] = comment end
    if a[k+3] ~= '' then f[#f + 1] = 'count'; f[#f + 1] = a[k+3] end
    if a[k+4] ~= '' then f[#f + 1] = 'rows_only'; f[#f + 1] = a[k+4] end
    redis.call('XADD', key, '*', unpack(f))
  end
end
--- op IFNX
if redis.call('SET', a[i+1], '1', 'NX', 'EX', a[i+2]) then run(a, j, last) end
--- op IFADD
if redis.call('SADD', a[i+1], a[i+2]) == 1 then run(a, j, last) end
--- op IFAGE
redis.call('HSETNX', a[i+1], a[i+2], a[i+3])
local since = tonumber(redis.call('HGET', a[i+1], a[i+2]))
if tonumber(a[i+3]) - since >= tonumber(a[i+4]) then run(a, j, last) end
--- op G
parked(a, i, j, last, nil)
--- op GN
-- GN carries the statement's number in its transaction (after ttl), kept with what is parked
parked(a, i, j, last, tonumber(a[i+4]))
--- op C
redis.call('SET', a[i+1], a[i+3], 'EX', a[i+4])
local outcome, undone = split_outcome(a[i+3])
if outcome == 'committed' then
  for _, blob in ipairs(redis.call('LRANGE', a[i+2], 0, -1)) do
    local sub, seq = cmsgpack.unpack(blob)
    if not is_undone(undone, seq) then run(sub, 1, #sub) end
  end
end
redis.call('DEL', a[i+2])
--- op N
noted[#noted + 1] = a[i+1]
--@end

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local ids = cjson.decode(ARGV[5])
local nids = #ids
-- ARGV[7], ARGV[8]: when the batch was read (ms, this server's clock, before the read ran) and the
-- group's claim floor key. No consumer takes an entry idle for less than the floor, so a batch read
-- less than half of it ago is still wholly ours and needs no entry-by-entry check.
local fresh = false
if ARGV[7] then
  local floor = redis.call('GET', ARGV[8])
  if floor then
    local t = redis.call('TIME')
    fresh = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[7]) < tonumber(floor) / 2
  end
end
if nids > 0 and not fresh then
  local pend = redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], nids + 10000, consumer)
  local owned = {}
  for _, p in ipairs(pend) do owned[p[1]] = true end
  local missing = {}
  for k = 1, nids do
    if not owned[ids[k]] then missing[#missing + 1] = ids[k] end
  end
  if #missing > 0 then
    table.insert(missing, 1, 0)
    return missing
  end
end
for k = 1, nids, 1000 do
  redis.call('XACK', stream, group, unpack(ids, k, math.min(k + 999, nids)))
end
local ops = cjson.decode(ARGV[6])
run(ops, 1, #ops)
for key, maxlen in pairs(caps) do redis.call('XTRIM', key, 'MAXLEN', '~', maxlen) end
return {1, nids, undescribed, fresh and 0 or 1, noted}
