"""BRIGHT evaluation of a dense ReasonIR encoder or the BM25 baseline.

    python -m reasonir_jax.eval.bright --model PATH --data BRIGHT_DIR --out OUT \\
        [--tasks biology,pony|all] [--retriever dense|bm25] [--queries original|gpt4_reason|FILE] \\
        [--long-documents] [--max-length N] [--batch-size N] [--cache-dir DIR] \\
        [--rewrite-backend openai --rewrite-model M --base-url U] \\
        [--rerank-backend openai --rerank-model M --base-url U]

Per task: queries get the task instruction (docs/reference.md section 6), documents none; the corpus
is encoded once into an on-disk cache (resumable); exact top-k runs on device in blocks with the
excluded ids masked out; the best 1000 are written as `OUT/<task>.run`. `OUT/results.json` holds
nDCG@10 and recall@100 (fractions) per task and their plain mean; a table compares them with the
published numbers. `OUT/queries/<task>.jsonl` records the query texts used (for reranking).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np

from reasonir_jax.eval import bright_data, cache, llm, metrics, published, retrieval

log = logging.getLogger(__name__)

TOP_K = 1000


def default_cache_dir() -> str:
  return os.environ.get("REASONIR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "reasonir_jax",
                                                       "embeddings"))


def corpus_embeddings(encoder, model_key: str, task: str, doc_ids, docs, *, max_length: int,
                      batch_size: int, long_documents: bool, cache_dir: str,
                      chunk_size: int = 8192) -> cache.ChunkedEmbeddings:
  """The task corpus's document embeddings, from the cache or encoded into it."""
  key = {"model": model_key, "task": task, "corpus": cache.corpus_fingerprint(doc_ids, docs),
         "max_length": max_length, "long_documents": long_documents, "template": "document",
         "dtype": str(getattr(getattr(encoder, "model_cfg", None), "dtype", ""))}
  entry = cache.EmbeddingCache(cache_dir, key, chunk_size=chunk_size,
                               name=f"{task}{'-long' if long_documents else ''}-{max_length}")

  def encode(texts):
    return encoder.encode(list(texts), instruction=None, batch_size=batch_size, max_length=max_length,
                          show_progress=False)

  return entry.get_or_encode(docs, encode)


def dense_run(encoder, model_key: str, task: str, examples, doc_ids, docs, *, max_length: int,
              batch_size: int, long_documents: bool, cache_dir: str, top_k: int = TOP_K,
              chunk_size: int = 8192) -> dict[str, dict[str, float]]:
  emb = corpus_embeddings(encoder, model_key, task, doc_ids, docs, max_length=max_length,
                          batch_size=batch_size, long_documents=long_documents, cache_dir=cache_dir,
                          chunk_size=chunk_size)
  q_emb = encoder.encode([e.query for e in examples], instruction=bright_data.query_instruction(task),
                         batch_size=batch_size, max_length=max_length, show_progress=True)
  doc_index = {d: i for i, d in enumerate(doc_ids)}
  excluded = retrieval.excluded_indices([e.excluded_ids for e in examples], doc_index)
  scores, indices = retrieval.exact_top_k(np.asarray(q_emb), emb, min(top_k, len(doc_ids)),
                                          excluded=excluded, mesh=getattr(encoder, "mesh", None))
  return retrieval.to_run([e.id for e in examples], doc_ids, scores, indices)


def bm25_run(task: str, examples, doc_ids, docs, top_k: int = TOP_K) -> dict[str, dict[str, float]]:
  from reasonir_jax.eval.bm25 import BM25Index
  index = BM25Index(docs)
  extra = max([len(e.excluded_ids) for e in examples] + [0])
  scores, indices = index.search([e.query for e in examples], top_k + extra)
  run = {}
  for e, s_k, i_k in zip(examples, scores, indices):
    # Zero-score hits share no term with the query: Lucene would not return them.
    run[e.id] = {doc_ids[i]: float(s) for s, i in zip(s_k, i_k) if s > 0}
  return retrieval.drop_excluded(run, {e.id: e.excluded_ids for e in examples}, top_k)


def average(results: dict[str, dict]) -> dict[str, float]:
  keys = ("ndcg@10", "recall@100")
  return {k: float(np.mean([r[k] for r in results.values()])) for k in keys} | {"num_tasks": len(results)}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="", help="HF model directory or training workdir (dense)")
  parser.add_argument("--data", default="", help="local BRIGHT dataset directory (default: shipped sample)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--tasks", default=None, help="'all', 'available' (those in --data) or comma-separated "
                      "task names; default: all, or available for the shipped sample")
  parser.add_argument("--retriever", choices=("dense", "bm25"), default="dense")
  parser.add_argument("--queries", default="original",
                      help="original | gpt4_reason | FILE/DIR of jsonl (id, query)")
  parser.add_argument("--long-documents", action="store_true", help="use long_documents and gold_ids_long")
  parser.add_argument("--max-length", type=int, default=2048, help="token limit of queries and documents")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16", help="encoder compute dtype")
  parser.add_argument("--mesh", default="1,-1,1", help="device mesh data,fsdp,tensor (-1: the rest); "
                      "e.g. -1,1,1 for pure data parallelism when the weights fit on one chip")
  parser.add_argument("--cache-dir", default="", help=f"embedding cache (default {default_cache_dir()})")
  parser.add_argument("--cache-chunk-size", type=int, default=8192, help="documents per cache chunk")
  parser.add_argument("--top-k", type=int, default=TOP_K, help="documents kept per query")
  parser.add_argument("--rewrite-max-tokens", type=int, default=None, help="token budget of each rewrite")
  parser.add_argument("--rerank-top-k", type=int, default=100)
  parser.add_argument("--rerank-alpha", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0, help="seed of the LLM requests (rewrite, rerank)")
  llm.add_backend_flags(parser, prefix="rewrite", what="query rewriting")
  llm.add_backend_flags(parser, prefix="rerank", what="ReasonIR-Rerank")
  llm.add_base_url_flag(parser)
  return parser


def load_encoder(model: str, dtype: str, mesh_shape: str):
  """The encoder on a mesh over every device (`--mesh data,fsdp,tensor`; one -1 is filled in)."""
  import types

  from reasonir_jax import Encoder
  from reasonir_jax.sharding import make_mesh
  try:
    shape = tuple(int(x) for x in mesh_shape.split(","))
  except ValueError:
    raise ValueError(f"--mesh {mesh_shape!r}: expected three integers data,fsdp,tensor, "
                     "e.g. 1,-1,1") from None
  mesh = make_mesh(types.SimpleNamespace(shape=shape, axes=("data", "fsdp", "tensor")))
  log.info("encoder mesh: %s", dict(mesh.shape))
  return Encoder.from_pretrained(model, dtype=dtype, mesh=mesh)


def resolve_data_dir(data: str) -> str:
  if data:
    if not os.path.isdir(data):
      raise FileNotFoundError(f"--data {data}: not a directory; {bright_data.LAYOUT_HELP}")
    return data
  try:
    from reasonir_jax.data.sample import sample_bright_dir
  except ImportError:
    raise FileNotFoundError("--data is required (no shipped BRIGHT sample in this install)") from None
  return sample_bright_dir()


def main(argv=None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    data_dir = resolve_data_dir(args.data)
    tasks = bright_data.parse_tasks(args.tasks or ("all" if args.data else "available"), data_dir)
    rewriter = llm.make_backend_from_args(args, "rewrite")
    llm.backend_kwargs(args, "rerank")  # fail on bad rerank flags before the long part
    # Every file the run needs, checked before hours of encoding.
    for task in tasks:
      bright_data.split_file(data_dir, "examples", task)
      bright_data.split_file(data_dir, "long_documents" if args.long_documents else "documents", task)
      if args.queries == "gpt4_reason":
        bright_data.split_file(data_dir, "gpt4_reason", task)
    if args.retriever == "dense" and not args.model:
      raise ValueError("--model is required with --retriever dense")
    model_key = cache.model_fingerprint(args.model) if args.retriever == "dense" else None
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  cache_dir = args.cache_dir or default_cache_dir()
  os.makedirs(args.out, exist_ok=True)

  encoder = None
  if args.retriever == "dense":
    encoder = load_encoder(args.model, args.dtype, args.mesh)

  results = {}
  for task in tasks:
    t0 = time.time()
    examples = bright_data.load_queries(data_dir, task, args.queries)
    if rewriter is not None:
      from reasonir_jax.eval import rewrite
      texts, _ = rewrite.rewrite_queries(rewriter, [e.query for e in examples], task,
                                         args.rewrite_max_tokens, args.seed)
      examples = [dataclasses.replace(e, query=q) for e, q in zip(examples, texts)]
      bright_data.write_jsonl(os.path.join(args.out, "rewritten", f"{task}.jsonl"),
                              [{"id": e.id, "query": e.query} for e in examples])
    doc_ids, docs = bright_data.load_documents(data_dir, task, args.long_documents)
    log.info("%s: %d queries, %d documents", task, len(examples), len(doc_ids))
    if args.retriever == "dense":
      run = dense_run(encoder, model_key, task, examples, doc_ids, docs, max_length=args.max_length,
                      batch_size=args.batch_size, long_documents=args.long_documents,
                      cache_dir=cache_dir, top_k=args.top_k, chunk_size=args.cache_chunk_size)
    else:
      run = bm25_run(task, examples, doc_ids, docs, args.top_k)
    metrics.write_trec_run(os.path.join(args.out, f"{task}.run"), run, tag=args.retriever)
    bright_data.write_jsonl(os.path.join(args.out, "queries", f"{task}.jsonl"),
                            [{"id": e.id, "query": e.query} for e in examples])
    results[task] = metrics.evaluate(run, bright_data.qrels_for(examples, args.long_documents))
    log.info("%s: nDCG@10 %.4f recall@100 %.4f (%.1fs)", task, results[task]["ndcg@10"],
             results[task]["recall@100"], time.time() - t0)

  results["average"] = average({t: results[t] for t in tasks})
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  queries_kind = args.queries if args.queries in published.PUBLISHED else "custom"
  if rewriter is not None:
    queries_kind = "rewritten"
    rewriter.close()
  print(published.format_table(results, queries_kind, title=args.retriever))

  if args.rerank_backend:
    from reasonir_jax.eval import rerank
    backend = llm.make_backend_from_args(args, "rerank")
    try:
      results["rerank"] = rerank.rerank_dir(
          backend, args.out, data_dir, tasks, top_k=args.rerank_top_k, alpha=args.rerank_alpha,
          long_documents=args.long_documents, seed=args.seed)
    finally:
      backend.close()
  return results


if __name__ == "__main__":
  main()
