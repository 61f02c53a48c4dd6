-- project_contexts.embedding's vector dimension (-1 while untyped).
SELECT atttypmod FROM pg_attribute
WHERE attrelid = 'project_contexts'::regclass AND attname = 'embedding' AND NOT attisdropped
