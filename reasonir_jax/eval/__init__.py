"""Evaluation: the BRIGHT harness (dense and BM25), query rewriting, ReasonIR-Rerank and RAG.

Entry points: `python -m reasonir_jax.eval.bright`, `.rewrite`, `.rerank`, `.rag`.
"""
