"""Query rewriting (docs/reference.md section 5): an LLM expands each query with its reasoning, and the
expansion replaces the query. Two protocols (`--protocol`):

- reference (default): ReasonIR's budgeted rewriting (eval/protocol.py, rewriting): the query
  (newlines as spaces) then three numbered instructions, then a sentence stating the token
  budget, as chat with a "helpful assistant" system line; temperature 0.8, top_p 0.8, a
  2,048-token budget. A rewrite cut at the budget is used as cut (counted as "cut at budget").
- ours: the task instruction heads our paraphrased prompt; temperature 0.8, top_p 0.8, a
  4,096-token budget that only caps generation; a cut rewrite counts as failed.

A failed or empty rewrite keeps the original query. The `transformers` backend does not report a
cut (it returns every answer as text), so there a cut rewrite counts as rewritten. `--prompt-file`
replaces the wording (fields `system`, `user` and, for the reference, `budget`;
docs/prompt_files.md).

    python -m reasonir_jax.eval.rewrite --data BRIGHT_DIR --tasks biology --out REWRITTEN \\
        --backend openai --backend-model M --base-url http://localhost:8000/v1 [--max-tokens 2048]

writes `REWRITTEN/<task>.jsonl` rows `{"id", "query"}` and appends each answer as it arrives to
`REWRITTEN/cache/<task>.jsonl`: a rerun (after a kill too) asks only for the missing rewrites.
The cache key holds the rendered request, so another wording or budget never reuses an answer.
Feed the rewrites back with `python -m reasonir_jax.eval.bright --queries REWRITTEN ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Sequence

from reasonir_jax import paths
from reasonir_jax.eval import bright_data, protocol
from reasonir_jax.llm import cache as llm_cache
from reasonir_jax.llm import flags as llm_flags
from reasonir_jax.llm import prompt_file
from reasonir_jax.llm.types import ChatFailure, SamplingParams

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
KEEP_CUT = {"reference": protocol.REWRITE_KEEP_CUT, "ours": False}

# The `--prompt-file` fields of each protocol, our wording as defaults. `user` may name the task
# instruction; the reference's `budget` sentence must state the budget. An empty `system` sends no
# system message.
_USER_FIELDS = {"allowed": {"instruction"}, "required": {"query"}}
SPECS = {
    "reference": prompt_file.Spec("rewrite", {
        "system": prompt_file.Field(protocol.REWRITE_SYSTEM),
        "user": prompt_file.Field(protocol.REWRITE_PROMPT, **_USER_FIELDS),
        "budget": prompt_file.Field(protocol.REWRITE_BUDGET, required={"budget"}),
    }),
    "ours": prompt_file.Spec("rewrite", {
        "system": prompt_file.Field(""),
        "user": prompt_file.Field(REWRITE_PROMPT, **_USER_FIELDS),
    }),
}


def load_prompts(protocol_name: str, path: str | None) -> prompt_file.Prompts:
  return prompt_file.load(SPECS[protocol_name], path)


def rewrite_prompt(query: str, task: str) -> str:
  return REWRITE_PROMPT.format(instruction=bright_data.query_instruction(task), query=query)


def rewrite_messages(query: str, task: str, max_tokens: int, protocol_name: str,
                     prompts: prompt_file.Prompts | None = None) -> list[dict]:
  prompts = prompts or SPECS[protocol_name].defaults()
  instruction = bright_data.query_instruction(task)
  if protocol_name == "reference":
    return protocol.rewrite_messages(query, max_tokens, system=prompts["system"], user=prompts["user"],
                                     budget_sentence=prompts["budget"], instruction=instruction)
  system = [{"role": "system", "content": prompts["system"]}] if prompts["system"] else []
  return system + [{"role": "user", "content": prompts.render("user", instruction=instruction, query=query)}]


def rewrite_queries(backend, queries: Sequence[str], task: str, max_tokens: int | None = None,
                    seed: int = 0, protocol_name: str = "reference",
                    cache: llm_cache.AnswerCache | None = None,
                    prompts: prompt_file.Prompts | None = None) -> tuple[list[str], dict]:
  """Returns (rewritten queries, counts {"queries", "cut", "failed"}). Under the reference a rewrite
  cut at the budget is used as cut ("cut"); a failed or empty one keeps the query ("failed")."""
  max_tokens = max_tokens or DEFAULT_MAX_TOKENS[protocol_name]
  keep_cut = KEEP_CUT[protocol_name]
  ref = protocol.REWRITE_SAMPLING
  sampling = SamplingParams(temperature=ref["temperature"], top_p=ref["top_p"], max_tokens=max_tokens,
                            seed=seed)
  conversations = [rewrite_messages(q, task, max_tokens, protocol_name, prompts) for q in queries]
  answers, _ = llm_cache.cached_generate(backend, cache, conversations, sampling,
                                         protocol=f"rewrite-{protocol_name}", keep_cut=keep_cut)
  out, failed, cut = [], 0, 0
  for q, a in zip(queries, answers):
    if isinstance(a, ChatFailure) and keep_cut and a.kind == "length" and (a.text or "").strip():
      cut += 1
      a = a.text
    if isinstance(a, ChatFailure) or not str(a).strip():
      failed += 1
      out.append(q)
    else:
      out.append(str(a).strip())
  if cut:
    log.info("%s: %d of %d rewrites cut at the %d-token budget; used as cut", task, cut, len(queries),
             max_tokens)
  if failed:
    log.warning("%s: %d of %d rewrites failed; those keep the original query", task, failed, len(queries))
  return out, {"queries": len(queries), "cut": cut, "failed": failed}


def rewrite_examples(backend, examples: Sequence, task: str, out_dir: str, max_tokens: int | None = None,
                     seed: int = 0, protocol_name: str = "reference", use_cache: bool = True,
                     prompts: prompt_file.Prompts | None = None) -> tuple[list, dict]:
  """Rewrites `examples` (bright_data.Example) with the answer cache `out_dir/cache/<task>.jsonl`,
  saves `out_dir/<task>.jsonl`; returns the rewritten examples and the counts of `rewrite_queries`."""
  cache = llm_cache.open_cache(out_dir, task) if use_cache else None
  try:
    rewritten, stats = rewrite_queries(backend, [e.query for e in examples], task, max_tokens, seed,
                                       protocol_name, cache, prompts)
  finally:
    if cache is not None:
      cache.close()
  examples = [dataclasses.replace(e, query=q) for e, q in zip(examples, rewritten)]
  path = paths.join(out_dir, f"{task}.jsonl")
  bright_data.write_jsonl(path, [{"id": e.id, "query": e.query} for e in examples])
  log.info("%s: %d rewritten queries (%d cut at budget, %d failed) -> %s", task, len(examples),
           stats["cut"], stats["failed"], path)
  return examples, stats


def rewrite_task(backend, data_dir: str, task: str, out_dir: str, queries: str = "original",
                 max_tokens: int | None = None, seed: int = 0, protocol_name: str = "reference",
                 use_cache: bool = True, prompts: prompt_file.Prompts | None = None) -> str:
  """Rewrites one task's queries and saves `out_dir/<task>.jsonl`; returns that path."""
  examples = bright_data.load_queries(data_dir, task, queries)
  rewrite_examples(backend, examples, task, out_dir, max_tokens, seed, protocol_name, use_cache, prompts)
  return paths.join(out_dir, f"{task}.jsonl")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="local BRIGHT dataset directory")
  parser.add_argument("--tasks", default="all", help="'all', 'available' or comma-separated task names")
  parser.add_argument("--out", required=True, help="directory for <task>.jsonl")
  parser.add_argument("--queries", default="original", help="queries to rewrite: original|gpt4_reason|FILE")
  parser.add_argument("--max-tokens", type=int, default=None,
                      help="token budget of each rewrite (default: 2048 reference, 4096 ours)")
  parser.add_argument("--protocol", choices=protocol.PROTOCOLS, default="reference",
                      help="reference: ReasonIR's budgeted rewriting; ours: our variant")
  parser.add_argument("--no-cache", action="store_true", help="do not read or append the answer cache")
  parser.add_argument("--seed", type=int, default=0)
  prompt_file.add_flag(parser, "rewrite")
  llm_flags.add_backend_flags(parser, required=True, what="the rewriter")
  llm_flags.add_base_url_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    tasks = bright_data.parse_tasks(args.tasks, args.data)
    prompts = load_prompts(args.protocol, args.prompt_file)
    backend = llm_flags.make_backend_from_args(args)
  except ValueError as e:
    parser.error(str(e))
  try:
    for task in tasks:
      rewrite_task(backend, args.data, task, args.out, args.queries, args.max_tokens, args.seed,
                   args.protocol, not args.no_cache, prompts)
  finally:
    backend.close()


if __name__ == "__main__":
  main()
