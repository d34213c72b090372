-- Atomically append outputs, ack inputs and remember their ids (exactly-once effect by id).
-- KEYS: input stream, done zset, the run's incarnation marker, output streams...
-- ARGV: group, now_ms, forget_before_ms, entry ids, keys, output counts (each "\n"-joined,
--       one per input), the incarnation the caller works for ('' = none yet), then
--       (stream index, key, payload) per output in input order.
-- Refuses (error LUFFY_RUN_LOST) when the run's marker is not the caller's: Redis lost the
-- run's state since the entries were read, and their outputs belong to no run now.
-- Joined lists and batched commands (one ZMSCORE / ZADD / XACK per call) keep both the
-- client's packing and the server's time per entry small. Returns one '1'/'0' per input.
local function split(text)
  local out = {}
  for item in string.gmatch(text, '([^\n]*)\n') do out[#out + 1] = item end
  return out
end
if ARGV[7] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[7] then
  return redis.error_reply('LUFFY_RUN_LOST the run marker is not ' .. ARGV[7])
end
local group, now = ARGV[1], ARGV[2]
local ids, keys, counts = split(ARGV[4]), split(ARGV[5]), split(ARGV[6])
local n = #ids
local scores = redis.call('ZMSCORE', KEYS[2], unpack(keys))
local result, fresh = {}, {}
local i = 8
for j = 1, n do
  local c = tonumber(counts[j])
  if scores[j] and keys[j] ~= '' then
    result[j] = '0'
    i = i + 3 * c
  else
    for _ = 1, c do
      redis.call('XADD', KEYS[3 + tonumber(ARGV[i])], '*', 'k', ARGV[i + 1], 'd', ARGV[i + 2])
      i = i + 3
    end
    result[j] = '1'
    if keys[j] ~= '' then
      fresh[#fresh + 1] = now
      fresh[#fresh + 1] = keys[j]
    end
  end
end
if #fresh > 0 then redis.call('ZADD', KEYS[2], unpack(fresh)) end
redis.call('XACK', KEYS[1], group, unpack(ids))
if ARGV[3] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3]) end
return table.concat(result)
