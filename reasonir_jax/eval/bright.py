"""BRIGHT evaluation of a dense ReasonIR encoder or the BM25 baseline.

    python -m reasonir_jax.eval.bright --model PATH --data BRIGHT_DIR --out OUT \\
        [--tasks biology,pony|all] [--retriever dense|bm25|hybrid] [--queries original|gpt4_reason|FILE[,...]] \\
        [--fusion score|rrf --dense-weight W --rrf-k K --fusion-depth N] \\
        [--protocol reference|ours] [--long-documents] [--max-length N] [--batch-size N] [--cache-dir DIR] \\
        [--rewrite-backend openai --rewrite-model M --base-url U] \\
        [--rerank-backend openai --rerank-model M --base-url U]

Per task: queries get the task instruction (docs/reference.md section 6), documents none; the corpus
is encoded once into an on-disk cache (resumable); exact top-k runs on device in blocks with the
excluded ids masked out; the best 1000 are written as `OUT/<task>.run`. `OUT/results.json` holds
nDCG@10 and recall@100 (fractions) per task, BRIGHT's metric set (NDCG@k, MAP@k, Recall@k, P@k,
MRR through pytrec_eval) and their plain means; a table compares them with the published numbers.
BRIGHT's own layout is written too: `OUT/<task>_<retriever>_long_<True|False>/score.json` (the
run as {qid: {docid: score}}) and `results.json` there, plus `OUT/qrels/<task>.qrels` (TREC qrels).
`OUT/queries/<task>.jsonl` records the query texts used (for reranking; the first query set when
several are fused), `OUT/per_query/<task>.json` each query's nDCG@10 and recall@100.

Fusion (eval/fusion.py, docs/hybrid_retrieval.md): `--retriever hybrid` retrieves with the dense
model and BM25, and several comma-separated `--queries` retrieve once per query set; each of these
lists holds `--fusion-depth` documents per query, and they are fused into one ranking (`score`:
weighted sum of per-query min-max normalised scores; `rrf`: reciprocal-rank fusion). A retriever's
weight (`--dense-weight`, BM25 the rest) is split evenly over the query sets. The fused run is
written like any other, with the fused scores; `OUT/fusion.json` records the settings.

`--protocol reference` (default) follows the public BM25, rewriting and reranking protocols
(eval/protocol.py); `--protocol ours` selects our earlier variants. `--long-documents` uses the
long corpora, gold_ids_long and BRIGHT's long instructions; `--tasks all` then means the 8 tasks
with long corpora. `--max-length` defaults to 32768 tokens (nothing the reference keeps is cut;
longer documents go in smaller batches); a smaller value logs how many documents it cuts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np

from reasonir_jax import paths
# The batch sizes by text length are the Encoder's decision (encode_by_length); bright only asks
# for them on the corpus, where --max-length lets documents run to 32768 tokens.
from reasonir_jax.encoder import encode_by_length, may_exceed
from reasonir_jax.eval import (bright_data, cache, encode_plan, fusion, metrics, protocol, published,
                               retrieval)
from reasonir_jax.llm import cache as llm_cache
from reasonir_jax.llm import flags as llm_flags

log = logging.getLogger(__name__)

TOP_K = 1000
RETRIEVERS = ("dense", "bm25", "hybrid")


def default_cache_dir() -> str:
  return os.environ.get("REASONIR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "reasonir_jax",
                                                       "embeddings"))


def corpus_embeddings(encoder, model_key: str, task: str, doc_ids, docs, *, max_length: int,
                      batch_size: int, long_documents: bool, cache_dir: str,
                      chunk_size: int = 8192,
                      cache_dtype: str = cache.DEFAULT_STORAGE_DTYPE) -> cache.ChunkedEmbeddings:
  """The task corpus's document embeddings, from the cache or encoded into it. The key is the
  corpus content, not the task: tasks sharing a corpus (aops, theoremqa_questions) share an entry."""
  fingerprint = cache.corpus_fingerprint(doc_ids, docs)
  key = cache.document_key(model_key, fingerprint, max_length, encoder)
  entry = cache.EmbeddingCache(cache_dir, key, chunk_size=chunk_size,
                               name=f"corpus-{fingerprint[:12]}-{max_length}", storage_dtype=cache_dtype)

  def encode(texts):
    with encode_plan.METER.timing(len(texts)):
      return encode_by_length(encoder, texts, instruction=None, batch_size=batch_size, max_length=max_length)

  return entry.get_or_encode(docs, encode)


def dense_run(encoder, model_key: str, task: str, examples, doc_ids, docs, *, max_length: int,
              batch_size: int, long_documents: bool, cache_dir: str, top_k: int = TOP_K,
              chunk_size: int = 8192,
              cache_dtype: str = cache.DEFAULT_STORAGE_DTYPE) -> dict[str, dict[str, float]]:
  emb = corpus_embeddings(encoder, model_key, task, doc_ids, docs, max_length=max_length,
                          batch_size=batch_size, long_documents=long_documents, cache_dir=cache_dir,
                          chunk_size=chunk_size, cache_dtype=cache_dtype)
  q_emb = encoder.encode([e.query for e in examples],
                         instruction=bright_data.query_instruction(task, long_documents),
                         batch_size=batch_size, max_length=max_length, show_progress=True)
  doc_index = {d: i for i, d in enumerate(doc_ids)}
  excluded = retrieval.excluded_indices([e.excluded_ids for e in examples], doc_index)
  scores, indices = retrieval.exact_top_k(np.asarray(q_emb), emb, min(top_k, len(doc_ids)),
                                          excluded=excluded, mesh=getattr(encoder, "mesh", None))
  return retrieval.to_run([e.id for e in examples], doc_ids, scores, indices)


def bm25_run(task: str, examples, doc_ids, docs, top_k: int = TOP_K,
             protocol_name: str = "reference", index=None) -> dict[str, dict[str, float]]:
  """`index`: a BM25Index of `docs` already built (several query sets search one index)."""
  if index is None:
    from reasonir_jax.eval.bm25 import BM25Index
    index = BM25Index(docs, protocol_name=protocol_name)
  extra = max([len(e.excluded_ids) for e in examples] + [0])
  scores, indices = index.search([e.query for e in examples], top_k + extra)
  run = {}
  for e, s_k, i_k in zip(examples, scores, indices):
    # The reference ranks every document, zero scores too; ours keeps Lucene's matches only.
    run[e.id] = {doc_ids[i]: float(s) for s, i in zip(s_k, i_k) if s > 0 or protocol_name == "reference"}
  return retrieval.drop_excluded(run, {e.id: e.excluded_ids for e in examples}, top_k)


def count_truncated(encoder, docs, max_length: int) -> int:
  """How many documents exceed max_length tokens as `BOS + document prefix + text` (tokenized as
  `Encoder.encode` does). Only texts with more UTF-8 bytes than that are tokenized."""
  tok = getattr(encoder, "prompt_tokenizer", None)
  if tok is None:
    return 0
  long = [docs[i] for i in may_exceed(docs, None, max_length)]
  return sum(len(ids) > max_length for ids in tok.full_ids(long, None)) if long else 0


def average(results: dict[str, dict]) -> dict[str, float]:
  first = next(iter(results.values()), {})
  keys = [k for k in first if k != "num_queries" and all(k in r for r in results.values())]
  return {k: float(np.mean([r[k] for r in results.values()])) for k in keys} | {"num_tasks": len(results)}


def write_public_layout(out: str, task: str, retriever: str, long_documents: bool, run, qrels,
                        task_results: dict) -> None:
  """BRIGHT's run.py outputs: <task>_<model>_long_<bool>/{score.json, results.json}; and qrels."""
  task_dir = paths.join(out, f"{task}_{retriever}_long_{long_documents}")
  metrics.write_score_json(paths.join(task_dir, "score.json"), run)
  bright_data.write_text(paths.join(task_dir, "results.json"),
                         json.dumps({k: v for k, v in task_results.items() if k[0].isupper()}, indent=2))
  metrics.write_qrels(paths.join(out, "qrels", f"{task}.qrels"), qrels)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What is retrieved and how it is fused: one list per (query set, retriever), in that order."""
  query_sets: tuple[str, ...]
  retrievers: tuple[str, ...]
  method: str = "score"
  retriever_weights: tuple[float, ...] = (1.0,)
  rrf_k: int = fusion.RRF_K
  depth: int = TOP_K

  @property
  def fused(self) -> bool:
    return len(self.query_sets) * len(self.retrievers) > 1

  def weights(self) -> list[float]:
    """Each list's weight: its retriever's share, split evenly over the query sets."""
    return [w / len(self.query_sets) for _ in self.query_sets for w in self.retriever_weights]


def parse_plan(args) -> Plan:
  """The retrieval plan of the flags, or ValueError naming the flag at fault."""
  query_sets = tuple(q.strip() for q in args.queries.split(","))
  if not all(query_sets):
    raise ValueError(f"--queries {args.queries!r}: an empty name; give original, gpt4_reason or a FILE/DIR "
                     "per comma-separated item")
  if args.top_k < 1:
    raise ValueError(f"--top-k {args.top_k}: must be >= 1")
  retrievers = ("dense", "bm25") if args.retriever == "hybrid" else (args.retriever,)
  plan = Plan(query_sets, retrievers)
  given = {flag: value for flag, value in (("--fusion", args.fusion), ("--dense-weight", args.dense_weight),
                                           ("--rrf-k", args.rrf_k), ("--fusion-depth", args.fusion_depth))
           if value is not None}
  if not plan.fused:
    if given:
      raise ValueError(f"{', '.join(given)}: nothing is fused; fusion needs --retriever hybrid or several "
                       "comma-separated --queries")
    return dataclasses.replace(plan, depth=args.top_k)
  method = args.fusion or "score"
  if args.dense_weight is not None:
    if args.retriever != "hybrid":
      raise ValueError(f"--dense-weight needs --retriever hybrid (got --retriever {args.retriever})")
    if not 0.0 <= args.dense_weight <= 1.0:
      raise ValueError(f"--dense-weight {args.dense_weight}: must be between 0 and 1 (BM25 gets 1 - it)")
  if args.rrf_k is not None:
    if method != "rrf":
      raise ValueError(f"--rrf-k needs --fusion rrf (got --fusion {method})")
    if args.rrf_k < 0:
      raise ValueError(f"--rrf-k {args.rrf_k}: must be >= 0")
  if args.fusion_depth is not None and args.fusion_depth < 1:
    raise ValueError(f"--fusion-depth {args.fusion_depth}: must be >= 1")
  dense = 0.5 if args.dense_weight is None else args.dense_weight
  weights = (dense, 1.0 - dense) if args.retriever == "hybrid" else (1.0,)
  return Plan(query_sets, retrievers, method, weights, fusion.RRF_K if args.rrf_k is None else args.rrf_k,
              args.fusion_depth or args.top_k)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="", help="HF model directory or training workdir (dense)")
  parser.add_argument("--data", default="", help="local BRIGHT dataset directory (default: shipped sample)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--tasks", default=None, help="'all', 'available' (those in --data) or comma-separated "
                      "task names; default: all, or available for the shipped sample")
  parser.add_argument("--retriever", choices=RETRIEVERS, default="dense",
                      help="dense, bm25, or hybrid: both, their rankings fused (--fusion)")
  parser.add_argument("--protocol", choices=protocol.PROTOCOLS, default="reference",
                      help="BM25, rewriting and reranking: reference (the public protocols) or ours")
  parser.add_argument("--queries", default="original",
                      help="original | gpt4_reason | FILE/DIR of jsonl (id, query); several, comma-separated "
                           "(e.g. original,REWRITES1,REWRITES2), fuse their rankings (--fusion)")
  parser.add_argument("--fusion", choices=fusion.METHODS, default=None,
                      help="how ranked lists are fused (hybrid, several --queries): score = weighted sum of "
                           "per-query min-max normalised scores (default), rrf = reciprocal-rank fusion")
  parser.add_argument("--dense-weight", type=float, default=None,
                      help="hybrid: weight of the dense lists, BM25 gets 1 - it (default 0.5)")
  parser.add_argument("--rrf-k", type=int, default=None, help=f"--fusion rrf: k of 1 / (k + rank) "
                      f"(default {fusion.RRF_K})")
  parser.add_argument("--fusion-depth", type=int, default=None,
                      help="documents each retriever returns per query set before fusion (default --top-k)")
  parser.add_argument("--long-documents", action="store_true",
                      help="long_documents, gold_ids_long and the long instructions (8 tasks)")
  parser.add_argument("--max-length", type=int, default=protocol.LONG_MAX_LENGTH,
                      help="token limit of queries and documents (default: the reference's 32768)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16", help="encoder compute dtype")
  parser.add_argument("--mesh", default="auto", help="device mesh data,fsdp,tensor (-1: the rest); "
                      "auto: pure data parallelism (-1,1,1) when the weights fit one chip, else 1,-1,1")
  parser.add_argument("--cache-dir", default="", help=f"embedding cache (default {default_cache_dir()})")
  parser.add_argument("--cache-chunk-size", type=int, default=8192, help="documents per cache chunk")
  cache.add_dtype_flag(parser)
  parser.add_argument("--top-k", type=int, default=TOP_K, help="documents kept per query")
  parser.add_argument("--rewrite-max-tokens", type=int, default=None,
                      help="token budget of each rewrite (default: 2048 reference, 4096 ours)")
  parser.add_argument("--rerank-top-k", type=int, default=protocol.RERANK_TOP_K)
  parser.add_argument("--rerank-alpha", type=float, default=protocol.RERANK_ALPHA)
  parser.add_argument("--seed", type=int, default=0, help="seed of the LLM requests (rewrite, rerank)")
  llm_flags.add_backend_flags(parser, prefix="rewrite", what="query rewriting")
  parser.add_argument("--rewrite-prompt-file", default=None,
                      help="TOML file of rewrite prompt fields replacing our wording (stage "
                           "`rewrite`, docs/prompt_files.md)")
  llm_flags.add_backend_flags(parser, prefix="rerank", what="ReasonIR-Rerank")
  llm_flags.add_base_url_flag(parser)
  return parser


def load_encoder(model: str, dtype: str, mesh_shape: str):
  """The encoder on a mesh over every device (`--mesh data,fsdp,tensor`; one -1 is filled in)."""
  import types

  from reasonir_jax import Encoder
  from reasonir_jax.sharding import make_mesh
  mesh_shape = encode_plan.resolve_mesh(mesh_shape, model, dtype)
  try:
    shape = tuple(int(x) for x in mesh_shape.split(","))
  except ValueError:
    raise ValueError(f"--mesh {mesh_shape!r}: expected auto or three integers data,fsdp,tensor, "
                     "e.g. 1,-1,1") from None
  mesh = make_mesh(types.SimpleNamespace(shape=shape, axes=("data", "fsdp", "tensor")))
  log.info("encoder mesh: %s", dict(mesh.shape))
  return Encoder.from_pretrained(model, dtype=dtype, mesh=mesh)


def resolve_data_dir(data: str) -> str:
  if data:
    if not paths.isdir(data):
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
    tasks = bright_data.parse_tasks(args.tasks or ("all" if args.data else "available"), data_dir,
                                    long_documents=args.long_documents)
    rewriter = llm_flags.make_backend_from_args(args, "rewrite")
    rewrite_prompts = None
    if rewriter is not None:
      from reasonir_jax.eval import rewrite
      rewrite_prompts = rewrite.load_prompts(args.protocol, args.rewrite_prompt_file)
    elif args.rewrite_prompt_file:
      raise ValueError("--rewrite-prompt-file needs a rewriting backend (--rewrite-backend)")
    llm_flags.backend_kwargs(args, "rerank")  # fail on bad rerank flags before the long part
    plan = parse_plan(args)
    if rewriter is not None and len(plan.query_sets) > 1:
      raise ValueError("--rewrite-backend rewrites one query set; for several, write each with "
                       "`python -m reasonir_jax.eval.rewrite --seed S --out DIR` and pass the DIRs to --queries")
    # Every file the run needs, checked before hours of encoding.
    for task in tasks:
      bright_data.split_file(data_dir, "examples", task)
      bright_data.split_file(data_dir, "long_documents" if args.long_documents else "documents", task)
      if "gpt4_reason" in plan.query_sets:
        bright_data.split_file(data_dir, "gpt4_reason", task)
    if "dense" in plan.retrievers and not args.model:
      raise ValueError(f"--model is required with --retriever {args.retriever}")
    model_key = cache.model_fingerprint(args.model) if "dense" in plan.retrievers else None
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  cache_dir = args.cache_dir or default_cache_dir()
  paths.makedirs(args.out)

  encoder = None
  if "dense" in plan.retrievers:
    encoder = load_encoder(args.model, args.dtype, args.mesh)
  if plan.fused:
    bright_data.write_text(paths.join(args.out, "fusion.json"), json.dumps(
        dataclasses.asdict(plan) | {"list_weights": plan.weights(), "top_k": args.top_k}, indent=1))

  results, projected = {}, False
  for task in tasks:
    t0 = time.time()
    query_sets = [bright_data.load_queries(data_dir, task, q) for q in plan.query_sets]
    examples = query_sets[0]
    if rewriter is not None:
      answers = llm_cache.open_cache(paths.join(args.out, "rewritten"), task)
      try:
        texts, _ = rewrite.rewrite_queries(rewriter, [e.query for e in examples], task,
                                           args.rewrite_max_tokens, args.seed, args.protocol, answers,
                                           rewrite_prompts)
      finally:
        answers.close()
      examples = [dataclasses.replace(e, query=q) for e, q in zip(examples, texts)]
      query_sets = [examples]
      bright_data.write_jsonl(paths.join(args.out, "rewritten", f"{task}.jsonl"),
                              [{"id": e.id, "query": e.query} for e in examples])
    doc_ids, docs = bright_data.load_documents(data_dir, task, args.long_documents)
    log.info("%s: %d queries, %d documents", task, len(examples), len(doc_ids))
    if encoder is not None:
      cut = count_truncated(encoder, docs, args.max_length)
      if cut:
        log.warning("%s: --max-length %d cuts %d of %d documents (the reference evaluates up to %d tokens)",
                    task, args.max_length, cut, len(docs), protocol.LONG_MAX_LENGTH)
    index = None
    if "bm25" in plan.retrievers and len(query_sets) > 1:
      from reasonir_jax.eval.bm25 import BM25Index
      index = BM25Index(docs, protocol_name=args.protocol)
    runs = []
    for qs in query_sets:
      for retriever in plan.retrievers:
        if retriever == "dense":
          runs.append(dense_run(encoder, model_key, task, qs, doc_ids, docs, max_length=args.max_length,
                                batch_size=args.batch_size, long_documents=args.long_documents,
                                cache_dir=cache_dir, top_k=plan.depth, chunk_size=args.cache_chunk_size,
                                cache_dtype=args.cache_dtype))
        else:
          runs.append(bm25_run(task, qs, doc_ids, docs, plan.depth, args.protocol, index=index))
    run = (fusion.fuse(runs, plan.weights(), plan.method, rrf_k=plan.rrf_k, top_k=args.top_k)
           if plan.fused else runs[0])
    metrics.write_trec_run(paths.join(args.out, f"{task}.run"), run, tag=args.retriever)
    bright_data.write_jsonl(paths.join(args.out, "queries", f"{task}.jsonl"),
                            [{"id": e.id, "query": e.query} for e in examples])
    qrels = bright_data.qrels_for(examples, args.long_documents)
    results[task] = metrics.evaluate(run, qrels) | metrics.public_metrics(run, qrels)
    write_public_layout(args.out, task, args.retriever, args.long_documents, run, qrels, results[task])
    bright_data.write_text(paths.join(args.out, "per_query", f"{task}.json"),
                           json.dumps(metrics.per_query_metrics(run, qrels), indent=1))
    log.info("%s: nDCG@10 %.4f recall@100 %.4f (%.1fs)", task, results[task]["ndcg@10"],
             results[task]["recall@100"], time.time() - t0)
    if encoder is not None and not projected and encode_plan.METER.rate():
      projected = True
      print(encode_plan.format_projection(encode_plan.METER.rate(), encode_plan.describe_devices()))

  results["average"] = average({t: results[t] for t in tasks})
  bright_data.write_text(paths.join(args.out, "results.json"), json.dumps(results, indent=1))
  queries_kind = args.queries if args.queries in published.PUBLISHED else "custom"
  if len(plan.query_sets) > 1:
    queries_kind = f"{len(plan.query_sets)} query sets fused"
  if rewriter is not None:
    queries_kind = "rewritten"
    rewriter.close()
  if args.long_documents:  # the published numbers are short-document ones
    queries_kind += ", long documents"
  print(published.format_table(results, queries_kind, title=args.retriever))

  if args.rerank_backend:
    from reasonir_jax.eval import rerank
    backend = llm_flags.make_backend_from_args(args, "rerank")
    try:
      results["rerank"] = rerank.rerank_dir(
          backend, args.out, data_dir, tasks, top_k=args.rerank_top_k, alpha=args.rerank_alpha,
          long_documents=args.long_documents, seed=args.seed, protocol_name=args.protocol)
    finally:
      backend.close()
  return results


if __name__ == "__main__":
  main()
