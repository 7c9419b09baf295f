"""The generation pipelines, one module each: `hq`, `vl`, `negatives`, `judge` (LLM) and `mine`
(BM25)."""
