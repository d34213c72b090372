-- Append a whole batch in one call: one command to pack and one integer to parse instead of
-- a pipeline of XADDs and their ids (the client-side cost dominates on small entries).
-- KEYS: stream. ARGV: key, payload, key, payload, ... Returns how many were appended.
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1])
end
return #ARGV / 2
