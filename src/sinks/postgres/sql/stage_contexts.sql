CREATE TEMP TABLE IF NOT EXISTS udo_stage_contexts (LIKE project_contexts) ON COMMIT DELETE ROWS
