"""ReasonIR-Rerank (docs/reference.md section 5): an LLM scores each of a query's top-k documents 0..5,
and the final score is alpha * score / 5 + (1 - alpha) * retriever score (alpha 0.5 breaks the
many ties of the 0..5 scale). An answer without "Relevance score:" counts 0; one whose score does
not parse (or a failed request) counts -1. Requests carry a fixed seed and temperature 0.

    python -m reasonir_jax.eval.rerank --run-dir OUT --data BRIGHT_DIR --backend openai \\
        --backend-model Qwen/Qwen2.5-32B-Instruct --base-url http://localhost:8000/v1 [--top-k 100]

reads `OUT/<task>.run` (and the query texts in `OUT/queries/<task>.jsonl` when present) and writes
`OUT/rerank/<task>.run`, `OUT/rerank/<task>.judgments.jsonl` and `OUT/rerank/results.json`.
Only the reranked top-k documents are kept in the new run files.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from typing import Mapping, Sequence

from reasonir_jax.eval import bright_data, llm, metrics, published

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

_MARKER = re.compile(r"relevance\s+score\s*[:=]", re.IGNORECASE)
_NUMBER = re.compile(r"^[\s*_`\[(\"']*(-?\d+(?:\.\d+)?)")


def prompt_for(task: str, query: str, document: str, max_doc_chars: int = 12000) -> str:
  template = (MATH_PROMPT if task in bright_data.MATH_TASKS
              else CODE_PROMPT if task in bright_data.CODE_TASKS else GENERAL_PROMPT)
  return template.format(query=query, document=document[:max_doc_chars])


def parse_relevance(answer) -> float:
  """0..5 from the last "Relevance score: X"; no marker -> 0; unparseable or out of range
  (or a failed request) -> -1."""
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


def interpolate(reranker_score: float, retriever_score: float, alpha: float = 0.5) -> float:
  return alpha * reranker_score / 5.0 + (1.0 - alpha) * retriever_score


def rerank_run(backend, task: str, run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str],
               documents: Mapping[str, str], *, top_k: int = 100, alpha: float = 0.5, seed: int = 0,
               max_tokens: int = 1024, max_doc_chars: int = 12000,
               queries_per_request_batch: int = 16) -> tuple[dict, list[dict]]:
  """Returns (reranked run of each query's top-k, judgment rows)."""
  from data_gen.backends import SamplingParams
  sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=seed)
  qids = [q for q in run if q in queries]
  missing = [q for q in run if q not in queries]
  if missing:
    raise KeyError(f"rerank {task}: no query text for {len(missing)} run queries, e.g. {missing[:3]}")
  if any(abs(s) > 1.0 + 1e-4 for q in qids for s in run[q].values()):
    log.warning("rerank %s: retriever scores exceed [-1, 1] (not cosines, e.g. BM25); the interpolation "
                "with score / 5 then mostly keeps the retriever's order", task)
  new_run, judgments = {}, []
  t0, done = time.time(), 0
  for b in range(0, len(qids), queries_per_request_batch):
    batch = qids[b:b + queries_per_request_batch]
    pairs = []
    for qid in batch:
      for doc in metrics.ranked_ids(run[qid])[:top_k]:
        if doc not in documents:
          raise KeyError(f"rerank {task}: run document {doc!r} is not in the corpus")
        pairs.append((qid, doc))
    conversations = [[{"role": "user", "content": prompt_for(task, queries[q], documents[d], max_doc_chars)}]
                     for q, d in pairs]
    answers = backend.chat(conversations, sampling)
    for (qid, doc), answer in zip(pairs, answers):
      score = parse_relevance(answer)
      retriever_score = float(run[qid][doc])
      final = interpolate(score, retriever_score, alpha)
      new_run.setdefault(qid, {})[doc] = final
      text = answer if isinstance(answer, str) else f"FAILED: {answer.reason}"
      judgments.append({"qid": qid, "docid": doc, "relevance": score,
                        "retriever_score": retriever_score, "final": final, "answer": text})
    done += len(pairs)
    log.info("rerank %s: %d/%d queries, %d judgments (%.1f/s)", task, b + len(batch), len(qids), done,
             done / max(time.time() - t0, 1e-9))
  return new_run, judgments


def load_query_texts(run_dir: str, data_dir: str, task: str, queries: str = "") -> dict[str, str]:
  """The texts retrieval used (OUT/queries/<task>.jsonl), or --queries when given."""
  if not queries:
    saved = os.path.join(run_dir, "queries", f"{task}.jsonl")
    queries = saved if os.path.isfile(saved) else "original"
  if queries in ("original", "gpt4_reason"):
    return {e.id: e.query for e in bright_data.load_queries(data_dir, task, queries)}
  return bright_data.read_query_file(queries, task)


def rerank_dir(backend, run_dir: str, data_dir: str, tasks: Sequence[str], *, top_k: int = 100,
               alpha: float = 0.5, long_documents: bool = False, seed: int = 0, queries: str = "",
               max_tokens: int = 1024, max_doc_chars: int = 12000, out_dir: str = "") -> dict:
  out_dir = out_dir or os.path.join(run_dir, "rerank")
  results = {}
  for task in tasks:
    run = metrics.read_trec_run(os.path.join(run_dir, f"{task}.run"))
    texts = load_query_texts(run_dir, data_dir, task, queries)
    doc_ids, docs = bright_data.load_documents(data_dir, task, long_documents)
    new_run, judgments = rerank_run(backend, task, run, texts, dict(zip(doc_ids, docs)), top_k=top_k,
                                    alpha=alpha, seed=seed, max_tokens=max_tokens,
                                    max_doc_chars=max_doc_chars)
    metrics.write_trec_run(os.path.join(out_dir, f"{task}.run"), new_run, tag="rerank")
    bright_data.write_jsonl(os.path.join(out_dir, f"{task}.judgments.jsonl"), judgments)
    qrels = bright_data.qrels_for(bright_data.load_examples(data_dir, task), long_documents)
    results[task] = metrics.evaluate(new_run, qrels) | {"before": metrics.evaluate(run, qrels)}
    log.info("rerank %s: nDCG@10 %.4f -> %.4f", task, results[task]["before"]["ndcg@10"],
             results[task]["ndcg@10"])
  keys = ("ndcg@10", "recall@100")
  results["average"] = {k: sum(results[t][k] for t in tasks) / len(tasks) for k in keys} | {
      "num_tasks": len(tasks)}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results | {"config": {"top_k": top_k, "alpha": alpha, "seed": seed,
                                    "model": getattr(backend, "model", "")}}, f, indent=1)
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
  parser.add_argument("--top-k", type=int, default=100, help="documents reranked per query")
  parser.add_argument("--alpha", type=float, default=0.5, help="weight of the reranker score")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max-tokens", type=int, default=1024, help="generation budget per judgment")
  parser.add_argument("--max-doc-chars", type=int, default=12000, help="documents are cut to this length")
  parser.add_argument("--out", default="", help="output directory (default RUN_DIR/rerank)")
  llm.add_backend_flags(parser, required=True, what="the reranker")
  llm.add_base_url_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    if args.tasks:
      tasks = bright_data.parse_tasks(args.tasks, args.data)
    else:
      tasks = [t for t in bright_data.TASKS if os.path.isfile(os.path.join(args.run_dir, f"{t}.run"))]
      if not tasks:
        raise ValueError(f"--run-dir {args.run_dir}: no <task>.run files")
    if not 0.0 <= args.alpha <= 1.0:
      raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    backend = llm.make_backend_from_args(args)
  except ValueError as e:
    parser.error(str(e))
  try:
    return rerank_dir(backend, args.run_dir, args.data, tasks, top_k=args.top_k, alpha=args.alpha,
                      long_documents=args.long_documents, seed=args.seed, queries=args.queries,
                      max_tokens=args.max_tokens, max_doc_chars=args.max_doc_chars, out_dir=args.out)
  finally:
    backend.close()


if __name__ == "__main__":
  main()
