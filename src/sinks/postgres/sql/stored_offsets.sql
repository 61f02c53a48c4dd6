-- Stored next offsets of group $1 for the partitions ($2 topics, $3 partitions).
SELECT o.topic, o.partition, o.next_offset FROM consumer_offsets o
JOIN UNNEST($2::text[], $3::int4[]) AS u(topic, partition) ON o.topic = u.topic AND o.partition = u.partition
WHERE o.consumer_group = $1
