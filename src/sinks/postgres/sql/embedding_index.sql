CREATE INDEX IF NOT EXISTS project_contexts_embedding_hnsw
ON project_contexts USING hnsw (embedding vector_cosine_ops)
