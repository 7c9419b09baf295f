"""ReasonIR-Rerank (docs/reference.md section 5): an LLM scores each of a query's top-k documents
0..5, and the final score is alpha * normalised score + (1 - alpha) * retriever score (alpha 0.5
breaks the many ties of the 0..5 scale). Two protocols (`--protocol`):

- reference (default): the public reranker (eval/protocol.py, ReasonIR-Rerank section): one prompt
  per task family (pony has its own), temperature 0.6, top_p 0.9, 32 new tokens, the number in the
  two characters after the last "Relevance score:" divided by 5, no marker 0, a parse failure (or
  failed request) -1 on the normalised scale. As in the public code, the raw prompt is sent with
  no chat template (the backend's `complete`: /v1/completions for `openai`, `generate()` for
  `vllm` and `transformers`, a raw engine request for `vllm-async`) and an answer cut off at
  the 32 tokens is parsed, not counted as a failure. A backend without that path gets the
  prompt as one user message, with a warning.
- ours: our earlier prompts (think briefly, then "Relevance score: X."), as one user message
  through the chat template, temperature 0, 1,024 tokens, a failure -1 before dividing by 5.

The prompt wording of both protocols is ours (the reference one modelled on the public prompts'
structure); `--prompt-file FILE` supplies another, e.g. the public text (docs/prompt_files.md,
stages "rerank" and "rerank-ours").

    python -m reasonir_jax.eval.rerank --run-dir OUT --data BRIGHT_DIR --backend openai \\
        --backend-model Qwen/Qwen2.5-32B-Instruct --base-url http://localhost:8000/v1 [--top-k 100]

reads `OUT/<task>.run` (and the query texts in `OUT/queries/<task>.jsonl` when present) and writes
`OUT/rerank/<task>.run`, `OUT/rerank/<task>.judgments.jsonl`, `OUT/rerank/results.json` and the
answer cache `OUT/rerank/cache/<task>.jsonl` (appended as answers arrive; a rerun after a kill
asks only for the missing judgments). Only the reranked top-k documents are kept in the new runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from typing import Mapping, Sequence

from reasonir_jax import paths
from reasonir_jax.eval import bright_data, metrics, protocol, published
from reasonir_jax.llm import cache as llm_cache
from reasonir_jax.llm import flags as llm_flags
from reasonir_jax.llm import prompt_file
from reasonir_jax.llm.types import SamplingParams

log = logging.getLogger(__name__)

_FORMAT = ('Think it over briefly, then end your reply with exactly "Relevance score: X." where X is '
           "an integer from 0 (no help at all) to 5 (answers the query directly).")

GENERAL_PROMPT = """Judge how useful a document is for answering a query.

Query:
{query}

Document:
{document}

A document is useful when it supplies knowledge, reasoning or evidence that a person answering the
query would need, even if it does not share the query's words. Surface similarity alone is not usefulness.
""" + _FORMAT

MATH_PROMPT = """Judge how useful a document is for solving a math problem.

Problem:
{query}

Document:
{document}

A document is useful when it states a theorem, formula or technique that the solution needs, or
works through a problem that is solved by the same method. Sharing the topic or the wording is not enough.
""" + _FORMAT

CODE_PROMPT = """Judge how useful a document is for solving a coding problem.

Problem:
{query}

Document:
{document}

A document is useful when it shows an algorithm, data structure or a solved problem whose approach
carries over to this problem. Sharing the topic or the wording is not enough.
""" + _FORMAT

# The "rerank-ours" prompt file (docs/prompt_files.md): the `ours` protocol's wording.
OURS_PROMPTS = prompt_file.Spec("rerank-ours", {
    "general": prompt_file.Field(GENERAL_PROMPT, required={"query", "document"}),
    "math": prompt_file.Field(MATH_PROMPT, required={"query", "document"}),
    "code": prompt_file.Field(CODE_PROMPT, required={"query", "document"}),
})


def prompt_spec(protocol_name: str) -> prompt_file.Spec:
  """The prompt-file fields of a protocol: "rerank" (reference) or "rerank-ours"."""
  return protocol.RERANK_PROMPTS if protocol_name == "reference" else OURS_PROMPTS


_MARKER = re.compile(r"relevance\s+score\s*[:=]", re.IGNORECASE)
_NUMBER = re.compile(r"^[\s*_`\[(\"']*(-?\d+(?:\.\d+)?)")


def prompt_for(task: str, query: str, document: str, max_doc_chars: int | None = 12000,
               protocol_name: str = "ours", prompts: prompt_file.Prompts | None = None) -> str:
  """The judgment prompt; `prompts`: the protocol's wording in force (default ours)."""
  if max_doc_chars:
    document = document[:max_doc_chars]
  if protocol_name == "reference":
    return protocol.rerank_prompt(task, query, document, prompts)
  prompts = prompts or OURS_PROMPTS.defaults()
  field = "math" if task in bright_data.MATH_TASKS else "code" if task in bright_data.CODE_TASKS else "general"
  return prompts.render(field, query=query, document=document)


def parse_relevance(answer) -> float:
  """`ours`: 0..5 from the last "Relevance score: X"; no marker -> 0; unparseable or out of range
  (or a failed request) -> -1 (before the division by 5)."""
  if not isinstance(answer, str):
    return -1.0
  found = list(_MARKER.finditer(answer))
  if not found:
    return 0.0
  m = _NUMBER.match(answer[found[-1].end():])
  if m is None:
    return -1.0
  value = float(m.group(1))
  return value if 0.0 <= value <= 5.0 else -1.0


def normalised_score(answer, protocol_name: str) -> float:
  """The reranker score that enters the interpolation (the 0..5 scale divided by 5)."""
  if protocol_name == "reference":
    return protocol.rerank_score(answer)
  return parse_relevance(answer) / 5.0


def interpolate(normalised: float, retriever_score: float, alpha: float = 0.5) -> float:
  """alpha * the normalised reranker score (0..1, or -1 / -0.2 on failure) + (1 - alpha) * retriever."""
  return alpha * normalised + (1.0 - alpha) * retriever_score


def sampling_for(protocol_name: str, seed: int, max_tokens: int | None):
  if protocol_name == "reference":
    ref = protocol.RERANK_SAMPLING
    return SamplingParams(temperature=ref["temperature"], top_p=ref["top_p"],
                          max_tokens=max_tokens or ref["max_tokens"], seed=seed)
  return SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens or 1024, seed=seed)


def rerank_run(backend, task: str, run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str],
               documents: Mapping[str, str], *, top_k: int = 100, alpha: float = 0.5, seed: int = 0,
               max_tokens: int | None = None, max_doc_chars: int | None = None,
               protocol_name: str = "reference", cache: llm_cache.AnswerCache | None = None,
               queries_per_request_batch: int = 16,
               prompts: prompt_file.Prompts | None = None) -> tuple[dict, list[dict]]:
  """Returns (reranked run of each query's top-k, judgment rows). With `cache`, answers already
  there are reused and new ones appended as they arrive (the key holds the whole prompt, so two
  wordings never share an answer). `prompts`: the protocol's wording (default ours)."""
  if prompts is not None and prompts.stage != prompt_spec(protocol_name).stage:
    raise ValueError(f"rerank {task}: {prompts.stage} prompts given to --protocol {protocol_name} "
                     f"(which takes {prompt_spec(protocol_name).stage})")
  sampling = sampling_for(protocol_name, seed, max_tokens)
  if max_doc_chars is None:
    max_doc_chars = 0 if protocol_name == "reference" else 12000
  raw = protocol_name == "reference" and not protocol.RERANK_CHAT
  if raw and not getattr(backend, "raw_completion", False):
    log.warning("rerank %s: the reference sends the raw prompt without a chat template; the %s backend "
                "has no raw-completion path, so the prompt goes as one user message", task,
                getattr(backend, "name", "LLM"))
    raw = False
  qids = [q for q in run if q in queries]
  missing = [q for q in run if q not in queries]
  if missing:
    raise KeyError(f"rerank {task}: no query text for {len(missing)} run queries, e.g. {missing[:3]}")
  if any(abs(s) > 1.0 + 1e-4 for q in qids for s in run[q].values()):
    log.warning("rerank %s: retriever scores exceed [-1, 1] (not cosines, e.g. BM25); the interpolation "
                "with score / 5 then mostly keeps the retriever's order", task)
  new_run, judgments = {}, []
  t0, done, sent = time.time(), 0, 0
  for b in range(0, len(qids), queries_per_request_batch):
    batch = qids[b:b + queries_per_request_batch]
    pairs = []
    for qid in batch:
      for doc in metrics.ranked_ids(run[qid])[:top_k]:
        if doc not in documents:
          raise KeyError(f"rerank {task}: run document {doc!r} is not in the corpus")
        pairs.append((qid, doc))
    texts = [prompt_for(task, queries[q], documents[d], max_doc_chars, protocol_name, prompts) for q, d in pairs]
    requests = texts if raw else [[{"role": "user", "content": p}] for p in texts]
    answers, n_sent = llm_cache.cached_generate(backend, cache, requests, sampling, protocol=f"rerank-{protocol_name}",
                                                raw=raw, keep_truncated=raw and protocol.RERANK_KEEP_TRUNCATED)
    sent += n_sent
    for (qid, doc), answer in zip(pairs, answers):
      score = normalised_score(answer, protocol_name)
      retriever_score = float(run[qid][doc])
      final = interpolate(score, retriever_score, alpha)
      new_run.setdefault(qid, {})[doc] = final
      text = answer if isinstance(answer, str) else f"FAILED: {answer.reason}"
      row = {"qid": qid, "docid": doc, "score": score, "retriever_score": retriever_score, "final": final,
             "answer": text}
      if protocol_name == "ours":
        row["relevance"] = parse_relevance(answer)
      judgments.append(row)
    done += len(pairs)
    log.info("rerank %s: %d/%d queries, %d judgments, %d requested (%.1f/s)", task, b + len(batch),
             len(qids), done, sent, done / max(time.time() - t0, 1e-9))
  return new_run, judgments


def load_query_texts(run_dir: str, data_dir: str, task: str, queries: str = "") -> dict[str, str]:
  """The texts retrieval used (OUT/queries/<task>.jsonl), or --queries when given."""
  if not queries:
    saved = paths.join(run_dir, "queries", f"{task}.jsonl")
    queries = saved if paths.isfile(saved) else "original"
  if queries in ("original", "gpt4_reason"):
    return {e.id: e.query for e in bright_data.load_queries(data_dir, task, queries)}
  return bright_data.read_query_file(queries, task)


def rerank_dir(backend, run_dir: str, data_dir: str, tasks: Sequence[str], *, top_k: int = 100,
               alpha: float = 0.5, long_documents: bool = False, seed: int = protocol.RERANK_SEED,
               queries: str = "", max_tokens: int | None = None, max_doc_chars: int | None = None,
               out_dir: str = "", protocol_name: str = "reference", use_cache: bool = True,
               prompts: prompt_file.Prompts | None = None) -> dict:
  out_dir = out_dir or paths.join(run_dir, "rerank")
  prompts = prompts or prompt_spec(protocol_name).defaults()
  results = {}
  for task in tasks:
    run = metrics.read_trec_run(paths.join(run_dir, f"{task}.run"))
    texts = load_query_texts(run_dir, data_dir, task, queries)
    doc_ids, docs = bright_data.load_documents(data_dir, task, long_documents)
    cache = llm_cache.open_cache(out_dir, task) if use_cache else None
    try:
      new_run, judgments = rerank_run(backend, task, run, texts, dict(zip(doc_ids, docs)), top_k=top_k,
                                      alpha=alpha, seed=seed, max_tokens=max_tokens,
                                      max_doc_chars=max_doc_chars, protocol_name=protocol_name, cache=cache,
                                      prompts=prompts)
    finally:
      if cache is not None:
        cache.close()
    metrics.write_trec_run(paths.join(out_dir, f"{task}.run"), new_run, tag="rerank")
    metrics.write_score_json(paths.join(out_dir, task, "score.json"), new_run)
    bright_data.write_jsonl(paths.join(out_dir, f"{task}.judgments.jsonl"), judgments)
    qrels = bright_data.qrels_for(bright_data.load_examples(data_dir, task), long_documents)
    results[task] = metrics.evaluate(new_run, qrels) | {"before": metrics.evaluate(run, qrels)}
    bright_data.write_text(paths.join(out_dir, task, "results.json"),
                           json.dumps(metrics.public_metrics(new_run, qrels), indent=2))
    log.info("rerank %s: nDCG@10 %.4f -> %.4f", task, results[task]["before"]["ndcg@10"],
             results[task]["ndcg@10"])
  keys = ("ndcg@10", "recall@100")
  results["average"] = {k: sum(results[t][k] for t in tasks) / len(tasks) for k in keys} | {
      "num_tasks": len(tasks)}
  config = {"top_k": top_k, "alpha": alpha, "seed": seed, "protocol": protocol_name,
            "model": getattr(backend, "model", ""),
            "prompts": {"source": prompts.source, "fingerprint": prompts.fingerprint}}
  bright_data.write_text(paths.join(out_dir, "results.json"), json.dumps(results | {"config": config}, indent=1))
  print(published.format_table(results, "rerank", title="rerank"))
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run-dir", required=True, help="output directory of reasonir_jax.eval.bright")
  parser.add_argument("--data", required=True, help="local BRIGHT dataset directory")
  parser.add_argument("--tasks", default="",
                      help="comma-separated tasks (default: every <task>.run in --run-dir)")
  parser.add_argument("--queries", default="", help="query texts (default: those the run used)")
  parser.add_argument("--long-documents", action="store_true")
  parser.add_argument("--protocol", choices=protocol.PROTOCOLS, default="reference",
                      help="reference: the public reranker's prompts, sampling and scoring; ours: our variant")
  parser.add_argument("--top-k", type=int, default=protocol.RERANK_TOP_K, help="documents reranked per query")
  parser.add_argument("--alpha", type=float, default=protocol.RERANK_ALPHA, help="weight of the reranker score")
  parser.add_argument("--seed", type=int, default=protocol.RERANK_SEED)
  parser.add_argument("--max-tokens", type=int, default=None,
                      help="generation budget per judgment (default: 32 reference, 1024 ours)")
  parser.add_argument("--max-doc-chars", type=int, default=None,
                      help="documents are cut to this length (default: none reference, 12000 ours)")
  parser.add_argument("--no-cache", action="store_true", help="do not read or append the answer cache")
  parser.add_argument("--out", default="", help="output directory (default RUN_DIR/rerank)")
  prompt_file.add_flag(parser, "rerank (stage rerank with --protocol reference, rerank-ours with ours)")
  llm_flags.add_backend_flags(parser, required=True, what="the reranker")
  llm_flags.add_base_url_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    if args.tasks:
      tasks = bright_data.parse_tasks(args.tasks, args.data, long_documents=args.long_documents)
    else:
      tasks = [t for t in bright_data.TASKS if paths.isfile(paths.join(args.run_dir, f"{t}.run"))]
      if not tasks:
        raise ValueError(f"--run-dir {args.run_dir}: no <task>.run files")
    if not 0.0 <= args.alpha <= 1.0:
      raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    prompts = prompt_file.load(prompt_spec(args.protocol), args.prompt_file)
    backend = llm_flags.make_backend_from_args(args)
  except ValueError as e:
    parser.error(str(e))
  try:
    return rerank_dir(backend, args.run_dir, args.data, tasks, top_k=args.top_k, alpha=args.alpha,
                      long_documents=args.long_documents, seed=args.seed, queries=args.queries,
                      max_tokens=args.max_tokens, max_doc_chars=args.max_doc_chars, out_dir=args.out,
                      protocol_name=args.protocol, use_cache=not args.no_cache, prompts=prompts)
  finally:
    backend.close()


if __name__ == "__main__":
  main()
