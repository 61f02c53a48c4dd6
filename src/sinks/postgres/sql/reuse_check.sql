-- (fragment) conflict clause of a checked insert into a table aliased t.
ON CONFLICT (event_id) DO UPDATE SET payload_hash = t.payload_hash
WHERE t.payload_hash <> EXCLUDED.payload_hash
RETURNING t.event_id, (t.xmax = 0) AS fresh
