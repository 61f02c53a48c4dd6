-- A partition's next offset for a group, moved forward only.
INSERT INTO consumer_offsets AS o (consumer_group, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
    SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), updated_at = now()
WHERE o.next_offset < EXCLUDED.next_offset
