-- Subjects $3 of group $1, task $2 removed since the last checkpoint.
DELETE FROM analyze_state WHERE consumer_group = $1 AND task = $2 AND subject = ANY($3)
