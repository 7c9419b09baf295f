"""Regenerates the shipped sample data from the hand-written facts in sample_facts.py.

  python -m reasonir_jax.assets.make_sample [--out DIR] [--tokenizer]

Writes (deterministically; no randomness beyond a fixed seed):
  sample_train.jsonl       280 training rows in the reference JSON-lines format, plus "id",
                           "source" and "domain" keys; queries from the facts' `situations`
  bright_sample/           a BRIGHT-layout evaluation set for tasks "biology" and "leetcode":
                           examples/, documents/, long_documents/, gpt4_reason/ parquet files;
                           queries from the facts' held-out `eval_situations`, so no evaluation
                           query (nor its scenario) is a training query
  tokenizer/               only with --tokenizer: a byte-level BPE (vocab 2048; BOS 0, EOS 1,
                           PAD 2) trained on all of it. Without the flag the shipped tokenizer is
                           kept: retraining changes token ids, and with them every checkpoint
                           and cached encoding made with the shipped one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re

from reasonir_jax.assets.sample_facts import DOMAINS, INSTRUCTIONS

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20250401
VOCAB_SIZE = 2048

PROSE_TEMPLATES = [
    "{s} What is going on here, and which principle explains it?",
    "I keep thinking about this: {s} Can someone walk me through the reasoning behind it?",
    "{s} I would like to understand the mechanism rather than just the fact. What should I read about?",
    "Here is a puzzle from my {d} class. {s} Explain why this happens and whether it generalises.",
]
PROBLEM_TEMPLATES = [
    "{s}",
    "How would you approach this problem? {s}",
    "{s} Explain the key idea behind an efficient solution.",
    "Practice problem: {s} Which technique applies, and why does it work here?",
]
BRIGHT_TASKS = {"biology": "biology", "leetcode": "coding"}


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def _templates(domain: str) -> list[str]:
  return PROBLEM_TEMPLATES if domain in ("math", "coding") else PROSE_TEMPLATES


def training_rows() -> list[dict]:
  rng = random.Random(SEED)
  rows = []
  for domain, facts in DOMAINS.items():
    for fi, fact in enumerate(facts):
      others = [f for j, f in enumerate(facts) if j != fi]
      for si, situation in enumerate(fact["situations"]):
        for ti, template in enumerate(_templates(domain)):
          query = template.format(s=situation, d=domain.replace("_", " "))
          positive = f"{fact['concept']}\n\n{fact['explanation']}"
          # Hard negatives: the same-topic distractor first, then other concepts of the domain;
          # 1 to 3 negatives so that sampling with repetition gets exercised.
          pool = [f"{o['concept']}\n\n{o['explanation']}" for o in others]
          rng.shuffle(pool)
          negatives = [fact["distractor"]] + pool[: (si * 4 + ti) % 3]
          rows.append({
              "id": f"sample-{domain}-{fi}-{si}-{ti}",
              "source": "sample",
              "domain": domain,
              "query": [INSTRUCTIONS[domain], query],
              "pos": [["", positive]],
              "neg": [["", n] for n in negatives],
          })
  return rows


def _sentences(text: str) -> list[str]:
  return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def bright_tables(task: str, domain: str) -> dict[str, list[dict]]:
  """examples, documents, long_documents, gpt4_reason rows of one task."""
  rng = random.Random(f"{SEED}-{task}")
  facts = DOMAINS[domain]
  documents, long_documents = [], []
  gold, gold_long, distractor_ids = {}, {}, {}
  for fi, fact in enumerate(facts):
    name = f"{_slug(fact['concept'])}.txt"
    if domain == "coding":
      chunks = [c for c in fact["explanation"].split("\n\n") if c]
    else:
      sents = _sentences(fact["explanation"])
      chunks = [" ".join(sents[i:i + 2]) for i in range(0, len(sents), 2)]
    ids = [f"{name}_{j}" for j in range(len(chunks))]
    documents += [{"id": i, "content": f"{fact['concept']}. {c}"} for i, c in zip(ids, chunks)]
    long_documents.append({"id": name, "content": f"{fact['concept']}\n\n{fact['explanation']}"})
    gold[fi], gold_long[fi] = ids, [name]
    distractor_ids[fi] = f"{_slug(fact['concept'])}_notes.txt_0"
    documents.append({"id": distractor_ids[fi], "content": fact["distractor"]})
  # Filler: every other domain's texts, then deterministic sentence mixes up to 200 documents.
  pool = []
  for d, fs in DOMAINS.items():
    if d == domain:
      continue
    for fact in fs:
      pool.append((f"{d}_{_slug(fact['concept'])}", f"{fact['concept']}. {fact['explanation']}"))
      pool.append((f"{d}_{_slug(fact['concept'])}_notes", fact["distractor"]))
  sentences = [s for _, text in pool for s in _sentences(text) if len(s) > 30]
  for key, text in pool:
    documents.append({"id": f"{key}.txt_0", "content": text})
    long_documents.append({"id": f"{key}.txt", "content": text})
  k = 0
  while len(documents) < 200:
    text = " ".join(rng.sample(sentences, 3))
    documents.append({"id": f"mixed_{k:03d}.txt_0", "content": text})
    long_documents.append({"id": f"mixed_{k:03d}.txt", "content": text + " " + " ".join(rng.sample(sentences, 3))})
    k += 1
  examples, rewritten = [], []
  templates = _templates(domain)
  for fi, fact in enumerate(facts):
    if len(fact.get("eval_situations", [])) != 2:
      raise ValueError(f"sample_facts.py: {domain} fact {fact['concept']!r} needs 2 eval_situations "
                       "(held-out scenarios for the BRIGHT-sample queries)")
    for si, situation in enumerate(fact["eval_situations"]):
      for ti in (0, 2) if si == 0 else (1, 3):
        qid = str(len(examples))
        query = templates[ti].format(s=situation, d=domain.replace("_", " "))
        excluded = [distractor_ids[fi]] if len(examples) % 4 == 0 else ["N/A"]
        row = {"id": qid, "query": query,
               "reasoning": f"The question needs the concept of {fact['concept'].lower()}.",
               "gold_ids": gold[fi], "gold_ids_long": gold_long[fi], "excluded_ids": excluded}
        examples.append(row)
        first = _sentences(fact["explanation"])[0]
        rewritten.append(dict(row, query=(
            f"{query}\n\nReasoning: the essential problem is to explain the observation. "
            f"A likely relevant idea is {fact['concept'].lower()}. {first}")))
  return {"examples": examples, "documents": documents, "long_documents": long_documents,
          "gpt4_reason": rewritten}


def check_held_out(train_rows: list[dict], tables: dict[str, dict[str, list[dict]]]) -> None:
  """Raises if an evaluation query is a training query or reuses a training scenario."""
  train_queries = {r["query"][1] for r in train_rows}
  situations = [s for facts in DOMAINS.values() for f in facts for s in f["situations"]]
  for task, task_tables in tables.items():
    for table in ("examples", "gpt4_reason"):
      for row in task_tables[table]:
        if row["query"] in train_queries or any(s in row["query"] for s in situations):
          raise ValueError(f"bright_sample {table}/{task} query {row['id']} overlaps the training "
                           f"set: {row['query'][:80]!r}")


def write_bright(out_dir: str, tables: dict[str, dict[str, list[dict]]]) -> list[str]:
  import pyarrow as pa
  import pyarrow.parquet as pq
  texts = []
  for task, task_tables in tables.items():
    for table, rows in task_tables.items():
      os.makedirs(os.path.join(out_dir, table), exist_ok=True)
      path = os.path.join(out_dir, table, f"{task}-00000-of-00001.parquet")
      pq.write_table(pa.Table.from_pylist(rows), path)
      texts += [r.get("content") or r.get("query") for r in rows]
  return texts


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=HERE, help="where to write (default: this package folder)")
  parser.add_argument("--tokenizer", action="store_true",
                      help="also retrain tokenizer/ (changes token ids; off by default)")
  args = parser.parse_args(argv)
  rows = training_rows()
  tables = {task: bright_tables(task, domain) for task, domain in BRIGHT_TASKS.items()}
  check_held_out(rows, tables)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "sample_train.jsonl"), "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  texts = write_bright(os.path.join(args.out, "bright_sample"), tables)
  print(f"wrote {len(rows)} training rows and the BRIGHT sample for {list(BRIGHT_TASKS)} "
        f"under {args.out}")
  if not args.tokenizer:
    return
  from reasonir_jax.tokenization import prompt_prefix, train_tokenizer
  corpus = [prompt_prefix(i) for i in INSTRUCTIONS.values()] + [prompt_prefix(None)]
  for r in rows:
    corpus += [r["query"][1]] + [t for _, t in r["pos"]] + [t for _, t in r["neg"]]
  train_tokenizer(corpus + texts, vocab_size=VOCAB_SIZE, out_dir=os.path.join(args.out, "tokenizer"))
  print(f"wrote the tokenizer (vocab {VOCAB_SIZE}) under {args.out}")


if __name__ == "__main__":
  main()
