-- Subjects of group $1, task $2 changed since the last checkpoint: keys $3, entries $4.
INSERT INTO analyze_state (consumer_group, task, subject, entry)
SELECT $1, $2, s, e FROM UNNEST($3::bytea[], $4::bytea[]) AS t(s, e)
ON CONFLICT (consumer_group, task, subject) DO UPDATE SET entry = EXCLUDED.entry
