-- A non-blocking XREADGROUP whose reply is flat (id, k, d, id, k, d, ...): far cheaper for
-- the client to parse than nested entries with field names. Missing fields come back as ''.
-- KEYS: stream. ARGV: group, consumer, count.
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not reply then return {} end
local out = {}
for _, entry in ipairs(reply[1][2]) do
  local fields, k, d = entry[2], '', ''
  for j = 1, #fields, 2 do
    if fields[j] == 'k' then k = fields[j + 1] elseif fields[j] == 'd' then d = fields[j + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = k
  out[#out + 1] = d
end
return out
