"""Evaluation: the BRIGHT harness (dense and BM25), query rewriting and its query-length scaling
sweep, ReasonIR-Rerank and RAG.

Entry points: `python -m reasonir_jax.eval.bright`, `.rewrite`, `.scaling`, `.rerank`, `.rag`.
"""
