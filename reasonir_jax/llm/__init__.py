"""LLM plumbing shared by the evaluation (rewriting, reranking, RAG) and data generation: request
and result types (`types`), the backends by name (`backends`), their command-line flags
(`flags`), the answer cache (`cache`) and prompt files (`prompt_file`)."""
