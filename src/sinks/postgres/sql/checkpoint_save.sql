-- One task's checkpoint: engine state and the input offsets it covers.
INSERT INTO analyze_checkpoints (consumer_group, task, state, offsets, config, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (consumer_group, task) DO UPDATE
SET state = EXCLUDED.state, offsets = EXCLUDED.offsets, config = EXCLUDED.config, updated_at = now()
