"""data_gen: reasoning-intensive synthetic training data (HQ queries, varied-length queries,
hard negatives) generated with an LLM and written as reasonir_jax TFRecords."""
