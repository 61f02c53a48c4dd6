-- The analyzer checkpoints of group $1 for tasks $2.
SELECT task, state, offsets, config FROM analyze_checkpoints WHERE consumer_group = $1 AND task = ANY($2)
