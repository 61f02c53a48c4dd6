-- udo-stream: claims event ids for Redis (see src/sinks/redis.rs).
-- KEYS[i] = udo:id:{event id}; ARGV[1] = TTL in seconds; ARGV[i + 1] = the
-- payload hash of KEYS[i]'s event. The first payload claims an id (for the
-- TTL); the same payload again is fine (a replay); another payload is
-- refused and its position returned, so the stored event is kept.
local ttl = tonumber(ARGV[1])
local refused = {}
for i, key in ipairs(KEYS) do
  local hash = ARGV[i + 1]
  local cur = redis.call('GET', key)
  if not cur then
    redis.call('SET', key, hash, 'EX', ttl)
  elseif cur ~= hash then
    refused[#refused + 1] = i
  end
end
return refused
