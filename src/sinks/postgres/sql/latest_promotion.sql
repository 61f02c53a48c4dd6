-- The newest promotion event stored for store $1, as the event's JSON.
SELECT json_build_object(
'event_id', event_id, 'occurred_at', (extract(epoch FROM occurred_at) * 1000)::int8,
'source', source, 'store', store, 'from_role', from_role, 'to_role', to_role,
'success_ratio', success_ratio, 'attempts', attempts, 'lag', lag, 'reason', reason)
FROM promotions WHERE store = $1 ORDER BY occurred_at DESC, event_id DESC LIMIT 1
