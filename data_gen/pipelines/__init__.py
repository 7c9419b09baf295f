"""The generation pipelines, one module each: `hq`, `vl`, `negatives` (LLM) and `mine` (BM25)."""
