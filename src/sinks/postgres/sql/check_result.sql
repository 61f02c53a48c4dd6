-- (fragment) reads a checked insert's w rows: (rows inserted, reused event ids).
SELECT count(*) FILTER (WHERE w.fresh),
coalesce(array_agg(w.event_id) FILTER (WHERE NOT w.fresh), '{}'::uuid[]) FROM w
