"""Command line: `python -m data_gen {filter,hq,vl,negatives,judge,mine,coverage} --input ...`.

Run `python -m data_gen <pipeline> --help` for the flags; data_gen/README.md explains them.
"""
from __future__ import annotations

import argparse
import logging
import sys

from data_gen import prompts
from reasonir_jax.llm import flags as llm_flags
from reasonir_jax.llm import prompt_file
from reasonir_jax.llm.types import SamplingParams

# Default new-token budgets: VL queries/positives run up to ~2000 words (~2700 tokens).
DEFAULT_MAX_TOKENS = {"hq": 1536, "vl": 4096, "negatives": 1536, "judge": 512}


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
  p.add_argument("--batches-in-flight", type=int, default=2,
                 help="batches processed at once on a streaming (openai, vllm-async) backend, "
                 "so one batch's slow tail overlaps the next batch")
  p.add_argument("--engine", choices=["local", "ray"], default="local",
                 help="local: this machine runs its --shard-index; ray: Ray Data spreads the "
                 "work over a Ray cluster (pip install 'reasonir-jax[cluster]')")
  p.add_argument("--ray-address", default=None,
                 help="--engine ray: the cluster to join (default: RAY_ADDRESS or a local one)")
  p.add_argument("--break-lock", action="store_true",
                 help="take over this shard's stage lock (only when its holder is dead)")
  p.add_argument("--log-level", default="INFO")


def _llm(p: argparse.ArgumentParser) -> None:
  llm_flags.add_backend_flags(p, default="vllm", what="generation",
                        legacy_aliases=("model", "dtype", "device"))
  s = p.add_argument_group("sampling")
  s.add_argument("--temperature", type=float, default=0.0)
  s.add_argument("--top-p", type=float, default=1.0)
  s.add_argument("--max-tokens", type=int, default=None,
                 help="new tokens per answer (default: hq/negatives 1536, vl 4096, judge 512)")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--max-attempts", type=int, default=3, help="tries per input and step")
  stage = p.prog.split()[-1]
  prompt_file.add_flag(p, stage if stage in ("vl", "judge") else
                       f"{stage} ({stage}-public with --prompt-style public)")


def _filters(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group(
      "seed document selection",
      "The defaults are the public ReasonIR selection: exact duplicates removed within each "
      "BRIGHT task, then the quality classifier's raw score >= --min-quality (1), then the "
      "--top-n best documents of each task. --top-n needs --quality-model or --quality-scorer "
      "(or the explicit --take-first).")
  g.add_argument("--min-doc-words", type=int, default=1,
                 help="drop documents with fewer words (default 1: only empty ones)")
  g.add_argument("--max-doc-words", type=int, default=None,
                 help="drop documents with more words (default: no bound)")
  g.add_argument("--near-dup-threshold", type=float, default=0.0,
                 help="also drop documents with 5-gram Jaccard >= this to a kept one (ours; "
                 "default 0: off)")
  g.add_argument("--quality-model", default=None,
                 help="an educational-quality classifier, FineWeb-Edu style: a transformers "
                 "AutoModelForSequenceClassification directory (or hub name) with its tokenizer; "
                 "a one-logit head's raw logit is the score")
  g.add_argument("--quality-batch-size", type=int, default=32)
  g.add_argument("--quality-max-length", type=int, default=512,
                 help="tokens of each document the classifier reads")
  g.add_argument("--quality-scorer", default=None,
                 help="instead of --quality-model: module:function taking a list of texts, "
                 "returning a list of scores")
  g.add_argument("--min-quality", type=float, default=1.0,
                 help="keep documents whose score is >= this (public: 1)")
  g.add_argument("--top-n", type=int, default=None,
                 help="keep the N best documents of each BRIGHT task (documents without a task: "
                 "N in all)")
  g.add_argument("--take-first", action="store_true",
                 help="with --top-n and no quality scorer: keep the first N documents of each "
                 "task by id, unscored (logged as a warning; not the published selection)")


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
  hq.add_argument("--prompt-style", choices=["ours", "public"], default="ours",
                  help="public: the public ReasonIR prompt structure (domain alignment steps, "
                  "reasoning before the JSON, no schema-constrained decoding)")
  hq.add_argument("--min-query-words", type=int, default=8)
  hq.add_argument("--max-query-words", type=int, default=400)

  filt = sub.add_parser("filter", help="only the hq seed filters: write the kept documents once, "
                        "for shard machines to share (hq --no-filter)")
  filt.add_argument("--input", required=True,
                    help="seed documents: files, globs, a directory, or a local BRIGHT dataset "
                    "copy (its documents/ files, every task)")
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
  neg.add_argument("--prompt-style", choices=["ours", "public"], default="ours",
                   help="ours: two turns (analysis, then the document); public: one turn from "
                   "instruction + query and instruction + positive, reasoning allowed")
  neg.add_argument("--append-negative", action="store_true",
                   help="keep the rows' negatives and append the written one (default: it "
                   "replaces them, as the public script does)")

  judge = sub.add_parser("judge", help="an LLM judge's 1-5 score per row, mapped to the row's loss weight")
  _common(judge)
  _llm(judge)
  judge.add_argument("--min-weight", type=float, default=0.2, help="weight of score 1 (linear up to 5)")
  judge.add_argument("--max-weight", type=float, default=1.0, help="weight of score 5")

  mine = sub.add_parser("mine", help="BM25 hard-negative mining for existing rows")
  _common(mine)
  mine.add_argument("--corpus", default=None,
                    help="documents (id + text/content); default: the rows' positives")
  mine.add_argument("--start-index", type=int, default=20,
                    help="first 0-based index of the BM25 ranking a negative is taken from "
                    "(public miner: 20, i.e. the top 20 are skipped)")
  mine.add_argument("--top-k", type=int, default=1000,
                    help="documents of the ranking searched (public miner: 1000)")
  mine.add_argument("--bm25", choices=["reference", "ours"], default="reference",
                    help="reference: BRIGHT's / the public miner's BM25 (Pyserini-style tokens, "
                    "Porter, query-weighted Lucene BM25); ours: bm25s (unweighted query, "
                    "1-character tokens dropped, Snowball)")
  mine.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (public miner: 0.9)")
  mine.add_argument("--b", type=float, default=0.4, help="BM25 b (public miner: 0.4)")
  mine.add_argument("--skip-zero-scores", action="store_true",
                    help="never take a document the query does not match (public miner: "
                    "zero scores allowed)")
  mine.add_argument("--num-negatives", type=int, default=1)
  cov = sub.add_parser("coverage", help="list the input ids no shard of a run has committed")
  cov.add_argument("--input", required=True,
                   help="the inputs the shards were given (hq: the `filter` output)")
  cov.add_argument("--kind", choices=["documents", "rows"], default="documents",
                   help="documents (hq, vl) or training rows (negatives, judge, mine)")
  cov.add_argument("--output-dir", required=True)
  cov.add_argument("--name", required=True, help="the run name (e.g. hq)")
  cov.add_argument("--missing-out", default=None, help="write the missing ids here, one a line")
  cov.add_argument("--log-level", default="INFO")
  return parser


def run_coverage(args) -> dict:
  from data_gen import inputs
  from data_gen.safety import coverage
  if args.kind == "documents":
    ids = (d["id"] for d in inputs.read_documents(args.input))
  else:
    ids = (r.row_id for r in inputs.read_training_rows(args.input))
  report = coverage(args.output_dir, args.name, ids)
  if args.missing_out:
    from data_gen.stage import write_text_atomic
    write_text_atomic(args.missing_out, "".join(f"{i}\n" for i in report["missing_ids"]))
  shown = report["missing_ids"][:20]
  print(f"coverage of {args.name!r} in {args.output_dir}: {report['done']}/{report['expected']} "
        f"inputs done over {report['manifests']} manifests ({report['num_shards']} shards); "
        f"missing shards {report['missing_shards']}; {report['missing']} missing ids"
        + (f", e.g. {shown}" if shown else ""))
  return report


def make_generation(args):
  from data_gen.runner import Generation
  # The vLLM engine seed follows --seed (each request carries its own seed as well).
  extra = {"seed": args.seed} if args.backend in ("vllm", "vllm-async") else {}
  backend = llm_flags.make_backend_from_args(args, **extra)
  max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS[args.pipeline]
  sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p,
                            max_tokens=max_tokens, seed=args.seed)
  return Generation(backend=backend, sampling=sampling, max_attempts=args.max_attempts)


def filtered_documents(args) -> tuple[list[dict], dict]:
  from data_gen import inputs
  from data_gen.filters import EduQualityScorer, load_callable
  from data_gen.pipelines.hq import filter_documents
  if args.quality_model and args.quality_scorer:
    raise ValueError("give --quality-model or --quality-scorer, not both")
  scorer = None
  if args.quality_model:
    scorer = EduQualityScorer(args.quality_model, batch_size=args.quality_batch_size,
                              max_length=args.quality_max_length)
  elif args.quality_scorer:
    scorer = load_callable(args.quality_scorer)
  return filter_documents(
      inputs.iter_documents(args.input), min_words=args.min_doc_words,
      max_words=args.max_doc_words, near_dup_threshold=args.near_dup_threshold or None,
      scorer=scorer, min_score=args.min_quality, top_n=args.top_n, take_first=args.take_first)


def run_filter(args) -> dict:
  import json
  from data_gen.stage import write_jsonl_atomic, write_text_atomic
  docs, report = filtered_documents(args)
  write_jsonl_atomic(args.output, docs)
  write_text_atomic(args.output + ".report.json", json.dumps(report, indent=2))
  print(f"filter: {report} -> {args.output}")
  return report


def load_prompts(args):
  """The wording of the pipeline's prompts: ours, or `--prompt-file`'s fields in its place
  (checked before any backend starts; an error names the file and the field)."""
  if args.pipeline == "hq":
    from data_gen.pipelines.hq import HQ_PROMPT_SPECS
    spec = HQ_PROMPT_SPECS[args.prompt_style]
  elif args.pipeline == "vl":
    spec = prompts.VL_PROMPTS
  elif args.pipeline == "judge":
    spec = prompts.JUDGE_PROMPTS
  else:
    from data_gen.pipelines.negatives import NEGATIVES_PROMPT_SPECS
    spec = NEGATIVES_PROMPT_SPECS[args.prompt_style]
  return prompt_file.load(spec, args.prompt_file)


def pipeline_from_args(args):
  """The LLM pipeline (hq, vl, negatives, judge) the flags describe, with its backend."""
  wording = load_prompts(args)
  gen = make_generation(args)
  if args.pipeline == "hq":
    from data_gen.pipelines.hq import HQPipeline
    return HQPipeline(gen, queries_per_doc=args.queries_per_doc, domain=args.domain,
                      min_query_words=args.min_query_words, max_query_words=args.max_query_words,
                      prompt_style=args.prompt_style, prompts=wording)
  if args.pipeline == "vl":
    from data_gen.pipelines.vl import VLPipeline, parse_buckets
    return VLPipeline(gen, buckets=parse_buckets(args.buckets),
                      length_tolerance=args.length_tolerance,
                      positive_words=(args.min_positive_words, args.max_positive_words),
                      domain=args.domain, prompts=wording)
  if args.pipeline == "judge":
    from data_gen.pipelines.judge import JudgePipeline
    return JudgePipeline(gen, min_weight=args.min_weight, max_weight=args.max_weight, prompts=wording)
  from data_gen.pipelines.negatives import NegativesPipeline
  return NegativesPipeline(gen, min_words=args.min_words, max_words=args.max_words,
                           max_overlap=args.max_overlap, prompt_style=args.prompt_style,
                           prompts=wording, append=args.append_negative)


# The flags that decide which documents hq keeps (a rerun must not change them).
_FILTER_FLAGS = ("input", "min_doc_words", "max_doc_words", "near_dup_threshold",
                 "quality_model", "quality_max_length", "quality_scorer", "min_quality", "top_n",
                 "take_first")


def filter_for_ray(args, name: str) -> str:
  """hq on Ray without --no-filter: the seed filters see the whole input (near-duplicates,
  --top-n), so they run here on the driver, once, as `filter` would; Ray gets the kept
  documents. A rerun with the same filter flags reuses them (no second quality-model pass)."""
  import json
  import os
  from data_gen.stage import write_jsonl_atomic, write_text_atomic
  work = os.path.join(args.output_dir, "_ray", name)
  path, settings_path = os.path.join(work, "filtered.jsonl"), os.path.join(work, "filter.json")
  settings = {k: getattr(args, k) for k in _FILTER_FLAGS}
  if os.path.exists(settings_path):
    with open(settings_path, encoding="utf-8") as f:
      old = json.load(f)
    if old["settings"] != settings:
      changed = sorted(k for k in settings if old["settings"].get(k) != settings[k])
      raise ValueError(f"{work} was filtered with other flags ({', '.join(changed)}); use the "
                       "same flags, or another --output-dir or --name")
    if os.path.exists(path):
      return path
  os.makedirs(work, exist_ok=True)
  docs, report = filtered_documents(args)
  write_jsonl_atomic(path, docs)
  write_text_atomic(settings_path, json.dumps({"settings": settings, "report": report},
                                              indent=2, sort_keys=True))
  print(f"filter (driver): {report} -> {path}")
  return path


def run_ray(args) -> dict:
  """`--engine ray`: the pipeline on Ray Data; each worker builds it from the flags."""
  import functools
  from data_gen import inputs
  from data_gen.ray_engine import _import_ray, check_output_dir, run_on_ray
  check_output_dir(args.output_dir)
  if args.pipeline == "mine":
    raise ValueError("--engine ray runs the LLM pipelines (hq, vl, negatives, judge); mine is CPU-only, "
                     "use --engine local")
  if args.num_shards != 1:
    raise ValueError("--engine ray balances the work itself: leave --num-shards at 1")
  name = args.name or args.pipeline
  input_paths = inputs.expand_inputs(args.input)
  if args.pipeline == "hq" and not args.no_filter:
    input_paths = [filter_for_ray(args, name)]
  ray = _import_ray()
  if not ray.is_initialized():
    ray.init(address=args.ray_address)
  return run_on_ray(functools.partial(pipeline_from_args, args), input_paths, args.output_dir,
                    name=name,
                    kind="rows" if args.pipeline in ("negatives", "judge") else "documents",
                    batch_size=args.batch_size, output_shards=args.output_shards)


def run(args) -> dict:
  from data_gen import inputs
  from data_gen.runner import run_pipeline
  if args.pipeline == "filter":
    return run_filter(args)
  if args.pipeline == "coverage":
    return run_coverage(args)
  if args.pipeline in ("hq", "vl", "negatives", "judge"):
    load_prompts(args)  # a bad --prompt-file fails here, before seed filtering or any request
  if args.engine == "ray":
    return run_ray(args)
  extra = {}
  pipeline = None
  if args.pipeline == "hq":
    if args.no_filter:
      items = inputs.read_documents(args.input)
      extra["filters"] = {"input": len(items), "filtered": "before (--no-filter)"}
    else:
      items, extra["filters"] = filtered_documents(args)
  elif args.pipeline == "vl":
    items = inputs.read_documents(args.input)
  elif args.pipeline in ("negatives", "judge"):
    items = inputs.read_training_rows(args.input)
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
    pipeline = MinePipeline(corpus, start_index=args.start_index,
                            num_negatives=args.num_negatives, top_k=args.top_k,
                            corpus_name=args.corpus or "input positives", k1=args.k1, b=args.b,
                            protocol=args.bm25, skip_zero_scores=args.skip_zero_scores)
  if pipeline is None:
    pipeline = pipeline_from_args(args)
  gen = getattr(pipeline, "gen", None)
  try:
    return run_pipeline(pipeline, items, args.output_dir, shard_index=args.shard_index,
                        num_shards=args.num_shards, batch_size=args.batch_size,
                        output_shards=args.output_shards, name=args.name, extra_manifest=extra,
                        batches_in_flight=args.batches_in_flight, break_lock=args.break_lock)
  finally:
    if gen is not None:
      gen.backend.close()


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=args.log_level.upper(),
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  try:
    result = run(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.pipeline == "coverage" and (result["missing"] or result["missing_shards"]):
    return 1
  return 0
