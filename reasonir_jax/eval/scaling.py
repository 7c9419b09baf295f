"""The query-length scaling sweep (ReasonIR's test-time scaling result): rewrite the queries under
each token budget, measure how long the rewrites came out, retrieve with them and score nDCG@10.

    python -m reasonir_jax.eval.scaling --data BRIGHT_DIR --tasks all --out SWEEP \\
        --budgets 64,128,256,512,1024,2048 --retriever dense --model RETRIEVER \\
        --backend openai --backend-model M --base-url http://localhost:8000/v1 [--tokenizer M]

Each budget's rewrites are made as `eval.rewrite` makes them (same backends, flags, protocol,
`--prompt-file`; under the reference a rewrite cut at its budget is used as cut) and saved, with
their answer cache, in `SWEEP/budget_<B>/<task>.jsonl` (a rerun asks only for what is missing);
the run goes beside them as `<task>.run`. Retrieval and scoring are eval/bright.py's. A first row,
"original", scores the queries as given. `SWEEP/scaling.json` holds every row: per task nDCG@10,
the mean words and tokens of the queries retrieved with (tokens: `--tokenizer`, the rewriter's HF
tokenizer; left out without it), and the rewrites cut at the budget or failed; the means over
tasks. `SWEEP/scaling.md` is that table and `SWEEP/scaling.png` the curve.
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from reasonir_jax import paths
from reasonir_jax.eval import bright, bright_data, cache, metrics, protocol, rewrite
from reasonir_jax.llm import flags as llm_flags
from reasonir_jax.llm import prompt_file

log = logging.getLogger(__name__)

ORIGINAL = "original"


def parse_budgets(text: str) -> list[int]:
  try:
    budgets = [int(b) for b in text.split(",") if b.strip()]
  except ValueError:
    budgets = []
  if not budgets or any(b <= 0 for b in budgets):
    raise ValueError(f"--budgets {text!r}: expected comma-separated positive token counts, e.g. 64,128,256")
  return sorted(set(budgets))


def query_lengths(queries, tokenizer=None) -> dict:
  """Mean words (whitespace-separated) and, with a tokenizer, mean tokens (no special tokens)."""
  out = {"words": float(np.mean([len(q.split()) for q in queries]))}
  if tokenizer is not None:
    ids = tokenizer(list(queries), add_special_tokens=False)["input_ids"]
    out["tokens"] = float(np.mean([len(i) for i in ids]))
  return out


def score(args, encoder, model_key, task: str, examples, doc_ids, docs, run_path: str) -> float:
  """nDCG@10 of `examples` on the task corpus, through eval/bright.py's retrieval."""
  if args.retriever == "dense":
    run = bright.dense_run(encoder, model_key, task, examples, doc_ids, docs, max_length=args.max_length,
                           batch_size=args.batch_size, long_documents=False, cache_dir=args.cache_dir,
                           top_k=args.top_k, cache_dtype=args.cache_dtype)
  else:
    run = bright.bm25_run(task, examples, doc_ids, docs, args.top_k, args.protocol)
  metrics.write_trec_run(run_path, run, tag=args.retriever)
  return metrics.evaluate(run, bright_data.qrels_for(examples, False))["ndcg@10"]


def summarize(row: dict) -> dict:
  """Means over tasks (nDCG@10 the plain mean, as BRIGHT averages; lengths per query)."""
  per_task = row["tasks"].values()
  n = sum(t["queries"] for t in per_task)
  row["ndcg@10"] = float(np.mean([t["ndcg@10"] for t in per_task]))
  for key in ("words", "tokens"):
    if all(key in t for t in per_task):
      row[key] = sum(t[key] * t["queries"] for t in per_task) / n
  row["cut"] = sum(t["cut"] for t in per_task)
  row["failed"] = sum(t["failed"] for t in per_task)
  return row


def markdown_table(rows: list[dict], tasks: list[str]) -> str:
  head = ["budget", "mean words", "mean tokens", "cut", "failed"] + tasks + ["mean nDCG@10"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    tokens = f"{r['tokens']:.1f}" if "tokens" in r else "n/a"
    cells = [r["label"], f"{r['words']:.1f}", tokens, str(r["cut"]), str(r["failed"])]
    cells += [f"{100 * r['tasks'][t]['ndcg@10']:.1f}" for t in tasks] + [f"{100 * r['ndcg@10']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\nnDCG@10 in %; cut: rewrites stopped at the budget; failed: original query kept.\n"


def plot(rows: list[dict], path: str) -> None:
  """Mean nDCG@10 against the budget and against the measured query length."""
  import matplotlib
  matplotlib.use("Agg")  # no display: write the file only
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  swept = [r for r in rows if r["budget"] is not None]
  original = next((r for r in rows if r["budget"] is None), None)
  fig, (by_budget, by_length) = plt.subplots(1, 2, figsize=(10, 4))
  length_key = "tokens" if all("tokens" in r for r in swept) else "words"
  for ax, xs, label in ((by_budget, [r["budget"] for r in swept], "token budget"),
                        (by_length, [r[length_key] for r in swept], f"mean query length ({length_key})")):
    ax.plot(xs, [100 * r["ndcg@10"] for r in swept], marker="o", label="rewritten")
    if original is not None:
      ax.axhline(100 * original["ndcg@10"], linestyle="--", color="gray", label="original queries")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 64, not 2^6
    ax.set_xlabel(label)
    ax.set_ylabel("mean nDCG@10 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
  by_budget.set_xticks([r["budget"] for r in swept])
  fig.suptitle("Query-length scaling")
  fig.tight_layout()
  with paths.open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="", help="local BRIGHT dataset directory (default: shipped sample)")
  parser.add_argument("--tasks", default=None, help="'all', 'available' or comma-separated task names; "
                      "default: all, or available for the shipped sample")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--budgets", default="64,128,256,512,1024,2048",
                      help="comma-separated token budgets of the rewrites (default: the paper's 64..2048)")
  parser.add_argument("--queries", default="original", help="queries to rewrite: original|gpt4_reason|FILE")
  parser.add_argument("--protocol", choices=protocol.PROTOCOLS, default="reference",
                      help="rewriting (and BM25) protocol: reference (ReasonIR's budgeted rewriting) or ours")
  parser.add_argument("--tokenizer", default="",
                      help="HF tokenizer (directory or name) of the rewriter, to measure queries in tokens")
  parser.add_argument("--retriever", choices=("dense", "bm25"), default="dense")
  parser.add_argument("--model", default="", help="HF model directory or training workdir (dense)")
  parser.add_argument("--max-length", type=int, default=protocol.LONG_MAX_LENGTH,
                      help="token limit of queries and documents (dense)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16", help="encoder compute dtype")
  parser.add_argument("--mesh", default="auto", help="device mesh data,fsdp,tensor, or auto")
  parser.add_argument("--cache-dir", default="", help=f"embedding cache (default {bright.default_cache_dir()})")
  cache.add_dtype_flag(parser)
  parser.add_argument("--top-k", type=int, default=bright.TOP_K, help="documents kept per query")
  parser.add_argument("--no-cache", action="store_true", help="do not read or append the answer caches")
  parser.add_argument("--seed", type=int, default=0)
  prompt_file.add_flag(parser, "rewrite")
  llm_flags.add_backend_flags(parser, required=True, what="the rewriter")
  llm_flags.add_base_url_flag(parser)
  return parser


def main(argv=None) -> list[dict]:
  parser = build_parser()
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    budgets = parse_budgets(args.budgets)
    data_dir = bright.resolve_data_dir(args.data)
    tasks = bright_data.parse_tasks(args.tasks or ("all" if args.data else "available"), data_dir)
    for task in tasks:  # every file, before any request
      bright_data.split_file(data_dir, "examples", task)
      bright_data.split_file(data_dir, "documents", task)
      if args.queries == "gpt4_reason":
        bright_data.split_file(data_dir, "gpt4_reason", task)
    prompts = rewrite.load_prompts(args.protocol, args.prompt_file)
    if args.retriever == "dense" and not args.model:
      raise ValueError("--model is required with --retriever dense")
    model_key = cache.model_fingerprint(args.model) if args.retriever == "dense" else None
    tokenizer = None
    if args.tokenizer:
      import transformers
      try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
      except (OSError, ValueError) as e:
        raise ValueError(f"--tokenizer {args.tokenizer}: cannot load it: {e}") from None
    backend = llm_flags.make_backend_from_args(args)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  args.cache_dir = args.cache_dir or bright.default_cache_dir()
  if tokenizer is None:
    log.info("no --tokenizer: query lengths are measured in words only")
  encoder = bright.load_encoder(args.model, args.dtype, args.mesh) if args.retriever == "dense" else None

  rows = [{"label": ORIGINAL, "budget": None, "tasks": {}}]
  rows += [{"label": str(b), "budget": b, "tasks": {}} for b in budgets]
  try:
    for task in tasks:
      examples = bright_data.load_queries(data_dir, task, args.queries)
      doc_ids, docs = bright_data.load_documents(data_dir, task, False)
      for row in rows:
        folder = paths.join(args.out, ORIGINAL if row["budget"] is None else f"budget_{row['budget']}")
        stats = {"queries": len(examples), "cut": 0, "failed": 0}
        used = examples
        if row["budget"] is not None:
          used, stats = rewrite.rewrite_examples(backend, examples, task, folder, row["budget"], args.seed,
                                                 args.protocol, not args.no_cache, prompts)
        ndcg = score(args, encoder, model_key, task, used, doc_ids, docs, paths.join(folder, f"{task}.run"))
        row["tasks"][task] = stats | query_lengths([e.query for e in used], tokenizer) | {"ndcg@10": ndcg}
        log.info("%s budget %s: nDCG@10 %.4f, %.1f words per query", task, row["label"], ndcg,
                 row["tasks"][task]["words"])
  finally:
    backend.close()
  rows = [summarize(r) for r in rows]
  bright_data.write_text(paths.join(args.out, "scaling.json"),
                         json.dumps({"tasks": tasks, "retriever": args.retriever, "protocol": args.protocol,
                                     "rows": rows}, indent=1))
  table = markdown_table(rows, tasks)
  bright_data.write_text(paths.join(args.out, "scaling.md"), table)
  plot(rows, paths.join(args.out, "scaling.png"))
  print(table)
  return rows


if __name__ == "__main__":
  main()
