"""Command line: `python -m data_gen {filter,hq,vl,negatives,mine} --input ...`.

Run `python -m data_gen <pipeline> --help` for the flags; data_gen/README.md explains them.
"""
from __future__ import annotations

import argparse
import logging
import sys

from data_gen.backends.base import SamplingParams, make_backend

# Default new-token budgets: VL queries/positives run up to ~2000 words (~2700 tokens).
DEFAULT_MAX_TOKENS = {"hq": 1536, "vl": 4096, "negatives": 1536}


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--input", required=True,
                 help="input files: comma-separated paths or globs, or a directory")
  p.add_argument("--output-dir", required=True, help="where TFRecords, rejects and manifest go")
  p.add_argument("--name", default=None, help="output file prefix (default: the pipeline name)")
  p.add_argument("--shard-index", type=int, default=0, help="this machine's shard, 0-based")
  p.add_argument("--num-shards", type=int, default=1, help="machines splitting the input")
  p.add_argument("--batch-size", type=int, default=256,
                 help="inputs per batch (one backend call per step; the resume granularity)")
  p.add_argument("--output-shards", type=int, default=1, help="TFRecord files per shard")
  p.add_argument("--log-level", default="INFO")


def _llm(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("LLM backend")
  g.add_argument("--backend", choices=["vllm", "openai", "transformers"], default="vllm")
  g.add_argument("--model", required=True, help="model path/id (openai: the served model name)")
  g.add_argument("--base-url", default=None, help="openai: endpoint, e.g. http://host:8000/v1")
  g.add_argument("--max-concurrency", type=int, default=32, help="openai: parallel requests")
  g.add_argument("--request-timeout", type=float, default=600.0, help="openai: seconds")
  g.add_argument("--max-retries", type=int, default=4,
                 help="openai: extra tries on timeouts, 429 and 5xx")
  g.add_argument("--retry-backoff", type=float, default=1.0,
                 help="openai: first backoff in seconds (doubles per retry, capped at 60)")
  g.add_argument("--no-structured-output", action="store_true",
                 help="do not ask the backend for schema-constrained JSON")
  g.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model")
  g.add_argument("--max-model-len", type=int, default=None, help="vllm: context length")
  g.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm")
  g.add_argument("--dtype", default="auto", help="vllm/transformers: weight dtype")
  g.add_argument("--device", default=None, help="transformers: cpu, cuda, ... (default: auto)")
  s = p.add_argument_group("sampling")
  s.add_argument("--temperature", type=float, default=0.0)
  s.add_argument("--top-p", type=float, default=1.0)
  s.add_argument("--max-tokens", type=int, default=None,
                 help="new tokens per answer (default: hq/negatives 1536, vl 4096)")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--max-attempts", type=int, default=3, help="tries per input and step")


def _filters(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("seed document filters")
  g.add_argument("--min-doc-words", type=int, default=50)
  g.add_argument("--max-doc-words", type=int, default=2000)
  g.add_argument("--near-dup-threshold", type=float, default=0.8,
                 help="drop documents with 5-gram Jaccard >= this to a kept one (0: off)")
  g.add_argument("--quality-scorer", default=None,
                 help="module:function taking a list of texts, returning a list of scores")
  g.add_argument("--min-quality", type=float, default=1.0)
  g.add_argument("--top-n", type=int, default=None, help="keep the N best documents")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m data_gen", description=__doc__)
  sub = parser.add_subparsers(dest="pipeline", required=True)

  hq = sub.add_parser("hq", help="reasoning-intensive queries from seed documents")
  _common(hq)
  _llm(hq)
  hq.add_argument("--queries-per-doc", type=int, default=4)
  hq.add_argument("--domain", default=None,
                  help="subject area for prompts and instructions (a document's `domain` wins)")
  _filters(hq)
  hq.add_argument("--no-filter", action="store_true",
                  help="use the input as is (already filtered by `python -m data_gen filter`)")
  hq.add_argument("--min-query-words", type=int, default=8)
  hq.add_argument("--max-query-words", type=int, default=400)

  filt = sub.add_parser("filter", help="only the hq seed filters: write the kept documents once, "
                        "for shard machines to share (hq --no-filter)")
  filt.add_argument("--input", required=True, help="seed documents")
  filt.add_argument("--output", required=True, help="the kept documents, a .jsonl file")
  filt.add_argument("--log-level", default="INFO")
  _filters(filt)

  vl = sub.add_parser("vl", help="varied-length queries and their positive documents")
  _common(vl)
  _llm(vl)
  vl.add_argument("--buckets", default="300-600,600-1000,1000-1500,1500-2000",
                  help="query length buckets in words")
  vl.add_argument("--length-tolerance", type=float, default=0.0,
                  help="relative slack on the bucket bounds (0.1 = 10%%)")
  vl.add_argument("--min-positive-words", type=int, default=150)
  vl.add_argument("--max-positive-words", type=int, default=1500)
  vl.add_argument("--domain", default=None)

  neg = sub.add_parser("negatives", help="multi-turn LLM hard negatives for existing rows")
  _common(neg)
  _llm(neg)
  neg.add_argument("--min-words", type=int, default=300)
  neg.add_argument("--max-words", type=int, default=2000)
  neg.add_argument("--max-overlap", type=float, default=0.4,
                   help="max content-word Jaccard between the negative and the positive")

  mine = sub.add_parser("mine", help="BM25 hard-negative mining for existing rows")
  _common(mine)
  mine.add_argument("--corpus", default=None,
                    help="documents (id + text/content); default: the rows' positives")
  mine.add_argument("--min-rank", type=int, default=20)
  mine.add_argument("--num-negatives", type=int, default=1)
  mine.add_argument("--depth", type=int, default=100, help="ranks searched past --min-rank")
  return parser


def make_generation(args):
  from data_gen.runner import Generation
  if args.backend == "openai":
    if not args.base_url:
      raise SystemExit("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
    backend = make_backend("openai", base_url=args.base_url, model=args.model,
                           max_concurrency=args.max_concurrency,
                           request_timeout_s=args.request_timeout, max_retries=args.max_retries,
                           backoff_s=args.retry_backoff,
                           structured_output=not args.no_structured_output)
  elif args.backend == "vllm":
    backend = make_backend("vllm", model=args.model,
                           tensor_parallel_size=args.tensor_parallel_size,
                           max_model_len=args.max_model_len,
                           gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                           seed=args.seed, structured_output=not args.no_structured_output)
  else:
    backend = make_backend("transformers", model=args.model, device=args.device,
                           dtype=args.dtype)
  max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS[args.pipeline]
  sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=max_tokens, seed=args.seed)
  return Generation(backend=backend, sampling=sampling, max_attempts=args.max_attempts)


def filtered_documents(args) -> tuple[list[dict], dict]:
  from data_gen import inputs
  from data_gen.filters import load_callable
  from data_gen.pipelines.hq import filter_documents
  scorer = load_callable(args.quality_scorer) if args.quality_scorer else None
  return filter_documents(
      inputs.read_documents(args.input), min_words=args.min_doc_words,
      max_words=args.max_doc_words, near_dup_threshold=args.near_dup_threshold or None,
      scorer=scorer, min_score=args.min_quality, top_n=args.top_n)


def run_filter(args) -> dict:
  import json
  from data_gen.stage import write_text_atomic
  docs, report = filtered_documents(args)
  write_text_atomic(args.output, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
  write_text_atomic(args.output + ".report.json", json.dumps(report, indent=2))
  print(f"filter: {report} -> {args.output}")
  return report


def run(args) -> dict:
  from data_gen import inputs
  from data_gen.runner import run_pipeline
  if args.pipeline == "filter":
    return run_filter(args)
  extra = {}
  gen = None
  if args.pipeline == "hq":
    from data_gen.pipelines.hq import HQPipeline
    if args.no_filter:
      docs = inputs.read_documents(args.input)
      report = {"input": len(docs), "filtered": "before (--no-filter)"}
    else:
      docs, report = filtered_documents(args)
    extra["filters"] = report
    gen = make_generation(args)
    pipeline = HQPipeline(gen, queries_per_doc=args.queries_per_doc, domain=args.domain,
                          min_query_words=args.min_query_words,
                          max_query_words=args.max_query_words)
    items = docs
  elif args.pipeline == "vl":
    from data_gen.pipelines.vl import VLPipeline, parse_buckets
    buckets = parse_buckets(args.buckets)
    items = inputs.read_documents(args.input)
    gen = make_generation(args)
    pipeline = VLPipeline(gen, buckets=buckets, length_tolerance=args.length_tolerance,
                          positive_words=(args.min_positive_words, args.max_positive_words),
                          domain=args.domain)
  elif args.pipeline == "negatives":
    from data_gen.pipelines.negatives import NegativesPipeline
    items = inputs.read_training_rows(args.input)
    gen = make_generation(args)
    pipeline = NegativesPipeline(gen, min_words=args.min_words, max_words=args.max_words,
                                 max_overlap=args.max_overlap)
  else:
    from data_gen.pipelines.mine import MinePipeline
    items = inputs.read_training_rows(args.input)
    if args.corpus:
      corpus = inputs.read_documents(args.corpus)
    else:  # the rows' positives, deduplicated
      seen, corpus = set(), []
      for row in items:
        for text in row.positives:
          if text not in seen:
            seen.add(text)
            corpus.append({"id": f"{row.row_id}/pos{len(corpus)}", "text": text})
    pipeline = MinePipeline(corpus, min_rank=args.min_rank, num_negatives=args.num_negatives,
                            depth=args.depth, corpus_name=args.corpus or "input positives")
  try:
    return run_pipeline(pipeline, items, args.output_dir, shard_index=args.shard_index,
                        num_shards=args.num_shards, batch_size=args.batch_size,
                        output_shards=args.output_shards, name=args.name, extra_manifest=extra)
  finally:
    if gen is not None:
      gen.backend.close()


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=args.log_level.upper(),
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  try:
    run(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0
