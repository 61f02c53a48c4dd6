-- udo-stream: applies one partition batch to Redis (see src/sinks/redis.rs).
-- KEYS[1] is the offsets hash; ARGV = field, next offset, then ops
-- `name, record offset, key index, n, n args...`. Fenced by the stored
-- offset: a batch at or behind it changes nothing.
local offsets, field = KEYS[1], ARGV[1]
local next_offset = tonumber(ARGV[2])
local stored = tonumber(redis.call('HGET', offsets, field) or '-1')
if next_offset <= stored then
  return {0, stored, 0}
end

-- Is (order, id) newer than (cur_order, cur_id)? Nothing stored: yes.
local function newer(cur_order, cur_id, order, id)
  if not cur_order then return true end
  cur_order = tonumber(cur_order)
  if order ~= cur_order then return order > cur_order end
  return id > (cur_id or '')
end

local applied, roles_key, primary_key = 0, nil, nil
local i, n = 3, #ARGV
while i <= n do
  local op, off, key, nargs = ARGV[i], tonumber(ARGV[i + 1]), KEYS[tonumber(ARGV[i + 2])], tonumber(ARGV[i + 3])
  local a = i + 4
  if off >= stored then
    if op == 'put' then
      -- order field, order, event id, field/value pairs: replace the hash if newer
      local cur = redis.call('HMGET', key, ARGV[a], 'event_id')
      if newer(cur[1], cur[2], tonumber(ARGV[a + 1]), ARGV[a + 2]) then
        local fv = {}
        for j = a + 3, a + nargs - 1 do fv[#fv + 1] = ARGV[j] end
        redis.call('DEL', key)
        redis.call('HSET', key, unpack(fv))
        applied = applied + 1
      end
    elseif op == 'chunks' then
      -- file path, count, then per chunk: record offset, chunk index,
      -- occurred_at, event id, UPSERT|DELETE, content, source. The file's
      -- array is decoded once and written once for all of a batch's chunks.
      local path, cnt = ARGV[a], tonumber(ARGV[a + 1])
      local raw = redis.call('HGET', key, path)
      local chunks = {}
      if raw then chunks = cjson.decode(raw) end
      local changed = false
      for j = 0, cnt - 1 do
        local b = a + 2 + j * 7
        local coff, idx, occ = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
        local id, cop = ARGV[b + 3], ARGV[b + 4]
        if coff >= stored then
          local pos = nil
          for k, c in ipairs(chunks) do
            if c.chunk_index == idx then pos = k break end
          end
          if pos == nil or newer(chunks[pos].occurred_at, chunks[pos].event_id, occ, id) then
            if cop == 'UPSERT' then
              local c = {
                chunk_index = idx, content = ARGV[b + 5], event_id = id, occurred_at = occ, source = ARGV[b + 6],
              }
              if pos then
                chunks[pos] = c
              else
                local at = #chunks + 1
                for k, x in ipairs(chunks) do
                  if x.chunk_index > idx then at = k break end
                end
                table.insert(chunks, at, c)
              end
              changed = true
            elseif pos then
              table.remove(chunks, pos)
              changed = true
            end
            applied = applied + 1
          end
        end
      end
      if changed then
        if #chunks == 0 then
          redis.call('HDEL', key, path)
        else
          redis.call('HSET', key, path, cjson.encode(chunks))
        end
      end
    elseif op == 'alert' then
      -- field, FIRING|RESOLVED, window end, event id, alert JSON
      local afield, status, order, id = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
      local raw = redis.call('HGET', key, afield)
      local cur = raw and cjson.decode(raw) or {}
      if newer(cur.window_end, cur.event_id, order, id) then
        if status == 'FIRING' then
          redis.call('HSET', key, afield, ARGV[a + 4])
        else
          redis.call('HDEL', key, afield)
        end
        applied = applied + 1
      end
    elseif op == 'role' then
      -- store, occurred_at, event id, promotion JSON, key index of udo:store:primary
      local store, order, id = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
      local raw = redis.call('HGET', key, store)
      local cur = raw and cjson.decode(raw) or {}
      if newer(cur.occurred_at, cur.event_id, order, id) then
        redis.call('HSET', key, store, ARGV[a + 3])
        roles_key, primary_key = key, KEYS[tonumber(ARGV[a + 4])]
        applied = applied + 1
      end
    else
      return redis.error_reply('udo apply: unknown op ' .. tostring(op))
    end
  end
  i = a + nargs
end

-- The primary store: the one promoted to PRIMARY most recently that still is.
if roles_key then
  local all = redis.call('HGETALL', roles_key)
  local best, bo, bi = nil, nil, nil
  for j = 1, #all, 2 do
    local r = cjson.decode(all[j + 1])
    if r.to_role == 'PRIMARY' and newer(bo, bi, r.occurred_at, r.event_id) then
      best, bo, bi = all[j], r.occurred_at, r.event_id
    end
  end
  if best then
    redis.call('SET', primary_key, best)
  else
    redis.call('DEL', primary_key)
  end
end

redis.call('HSET', offsets, field, ARGV[2])
return {1, stored, applied}
