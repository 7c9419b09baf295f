"""Query rewriting (docs/reference.md section 5): an LLM expands each query with its reasoning, and the
expansion replaces the query. Two protocols (`--protocol`):

- reference (default): BRIGHT's reason.py as ReasonIR ran it (eval/protocol.py, rewriting): the
  query (newlines as spaces) then three numbered instructions, as chat with a "helpful assistant"
  system line, temperature 0.8, top_p 0.8, a 2,048-token budget that the prompt states as well.
- ours: the task instruction heads our paraphrased prompt; temperature 0.8, top_p 0.8, a
  4,096-token budget that only caps generation.

    python -m reasonir_jax.eval.rewrite --data BRIGHT_DIR --tasks biology --out REWRITTEN \\
        --backend openai --backend-model M --base-url http://localhost:8000/v1 [--max-tokens 2048]

writes `REWRITTEN/<task>.jsonl` rows `{"id", "query"}` and appends each answer as it arrives to
`REWRITTEN/cache/<task>.jsonl`: a rerun (after a kill too) asks only for the missing rewrites.
Feed the rewrites back with `python -m reasonir_jax.eval.bright --queries REWRITTEN ...`.
"""
from __future__ import annotations

import argparse
import logging
from typing import Sequence

from reasonir_jax import paths
from reasonir_jax.eval import bright_data, llm, llm_cache, protocol

log = logging.getLogger(__name__)

# `ours`: our wording of the reference's "identify the problem, think step by step, draft an answer".
REWRITE_PROMPT = """{instruction}.

Query:
{query}

Before searching, work through the query so that a search engine can find what answers it:
1. Name the core problem the query is really about.
2. Reason step by step about which concepts, facts, theorems or worked examples a helpful
   document would contain.
3. Write a draft answer that brings in as many of those relevant ideas as you can."""

DEFAULT_MAX_TOKENS = {"reference": protocol.REWRITE_SAMPLING["max_tokens"], "ours": 4096}


def rewrite_prompt(query: str, task: str) -> str:
  return REWRITE_PROMPT.format(instruction=bright_data.query_instruction(task), query=query)


def rewrite_messages(query: str, task: str, max_tokens: int, protocol_name: str) -> list[dict]:
  if protocol_name == "reference":
    return protocol.rewrite_messages(query, max_tokens)
  return [{"role": "user", "content": rewrite_prompt(query, task)}]


def rewrite_queries(backend, queries: Sequence[str], task: str, max_tokens: int | None = None,
                    seed: int = 0, protocol_name: str = "reference",
                    cache: llm_cache.AnswerCache | None = None) -> tuple[list[str], int]:
  """Returns (rewritten queries, number of failures); a failed or empty rewrite keeps the query."""
  from data_gen.backends import ChatFailure, SamplingParams
  max_tokens = max_tokens or DEFAULT_MAX_TOKENS[protocol_name]
  ref = protocol.REWRITE_SAMPLING
  sampling = SamplingParams(temperature=ref["temperature"], top_p=ref["top_p"], max_tokens=max_tokens,
                            seed=seed)
  conversations = [rewrite_messages(q, task, max_tokens, protocol_name) for q in queries]
  answers, _ = llm_cache.cached_generate(backend, cache, conversations, sampling,
                                         protocol=f"rewrite-{protocol_name}")
  out, failed = [], 0
  for q, a in zip(queries, answers):
    if isinstance(a, ChatFailure) or not str(a).strip():
      failed += 1
      out.append(q)
    else:
      out.append(str(a).strip())
  if failed:
    log.warning("%s: %d of %d rewrites failed; those keep the original query", task, failed, len(queries))
  return out, failed


def rewrite_task(backend, data_dir: str, task: str, out_dir: str, queries: str = "original",
                 max_tokens: int | None = None, seed: int = 0, protocol_name: str = "reference",
                 use_cache: bool = True) -> str:
  """Rewrites one task's queries and saves `out_dir/<task>.jsonl`; returns that path."""
  examples = bright_data.load_queries(data_dir, task, queries)
  cache = llm_cache.open_cache(out_dir, task) if use_cache else None
  try:
    rewritten, _ = rewrite_queries(backend, [e.query for e in examples], task, max_tokens, seed,
                                   protocol_name, cache)
  finally:
    if cache is not None:
      cache.close()
  path = paths.join(out_dir, f"{task}.jsonl")
  bright_data.write_jsonl(path, [{"id": e.id, "query": q} for e, q in zip(examples, rewritten)])
  log.info("%s: %d rewritten queries -> %s", task, len(examples), path)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="local BRIGHT dataset directory")
  parser.add_argument("--tasks", default="all", help="'all', 'available' or comma-separated task names")
  parser.add_argument("--out", required=True, help="directory for <task>.jsonl")
  parser.add_argument("--queries", default="original", help="queries to rewrite: original|gpt4_reason|FILE")
  parser.add_argument("--max-tokens", type=int, default=None,
                      help="token budget of each rewrite (default: 2048 reference, 4096 ours)")
  parser.add_argument("--protocol", choices=protocol.PROTOCOLS, default="reference",
                      help="reference: BRIGHT's rewriting prompt and budget; ours: our variant")
  parser.add_argument("--no-cache", action="store_true", help="do not read or append the answer cache")
  parser.add_argument("--seed", type=int, default=0)
  llm.add_backend_flags(parser, required=True, what="the rewriter")
  llm.add_base_url_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    tasks = bright_data.parse_tasks(args.tasks, args.data)
    backend = llm.make_backend_from_args(args)
  except ValueError as e:
    parser.error(str(e))
  try:
    for task in tasks:
      rewrite_task(backend, args.data, task, args.out, args.queries, args.max_tokens, args.seed,
                   args.protocol, not args.no_cache)
  finally:
    backend.close()


if __name__ == "__main__":
  main()
