-- Trim a stream below the oldest entry any of its groups still needs (pending, or not yet
-- delivered). KEYS: stream. Returns {MINID used, entries removed}, or false.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return false end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
  local pend = redis.call('XPENDING', KEYS[1], info['name'])
  local cand
  if tonumber(pend[1]) > 0 then
    cand = pend[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    cand = string.format('%d-%d', ms, seq + 1)
  end
  if floor == nil or less(cand, floor) then floor = cand end
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', floor)
return {floor, removed}
