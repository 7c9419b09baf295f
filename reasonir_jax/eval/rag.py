"""Retrieval-augmented multiple-choice QA (docs/reference.md section 8): MMLU or GPQA, answered by an
LLM closed-book and with the top-k passages of a local datastore retrieved by our encoder.

    python -m reasonir_jax.eval.rag --task mmlu --data mmlu.jsonl --datastore DATASTORE \\
        --model RETRIEVER --backend openai --backend-model M --base-url U [--k 3] [--out OUT]

`--data` is JSON lines: `question`, `choices` (list; or `options`), `answer` (letter or 0-based
index), optional `id`, `subject`; GPQA's own fields (`Question`, `Correct Answer`,
`Incorrect Answer 1..3`) work too (choices shuffled with a fixed seed). `--datastore` is a
directory of `*.jsonl` files of `{"id", "text"}`; it is encoded once into an embedding cache.
Reports accuracy without and with retrieval (and writes `OUT/rag_<task>.json`).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import re
from typing import Sequence

import numpy as np

from reasonir_jax.eval import bright_data, cache, llm, retrieval

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
DEFAULT_INSTRUCTION = "Given a question, retrieve relevant passages that help answer the question"

QUESTION_PROMPT = """The following is a multiple choice question{about}. Think step by step and then finish your answer with "the answer is (X)" where X is the correct letter choice.

Question: {question}
Options:
{options}
Answer: Let's think step by step."""


def load_questions(path: str, task: str, seed: int = 0) -> list[dict]:
  """Rows with id, question, choices, answer (a letter), subject."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--data {path} not found (JSON lines of question, choices, answer)")
  out = []
  for n, row in enumerate(bright_data.read_rows([path])):
    qid = str(row.get("id", row.get("Record ID", n)))
    if "Correct Answer" in row:  # GPQA's own layout: put the correct answer at a seeded position
      choices = [row["Correct Answer"]] + [row[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
      order = list(range(4))
      random.Random(f"{seed}-{qid}").shuffle(order)
      question = row.get("Question", row.get("question"))
      answer = LETTERS[order.index(0)]
      choices = [str(choices[i]).strip() for i in order]
    else:
      choices = row.get("choices", row.get("options"))
      question, answer = row.get("question"), row.get("answer")
      if question is None or not choices or answer is None:
        raise KeyError(f"--data {path}: row {n + 1} needs question, choices (or options), answer; "
                       f"has {sorted(row)}")
      if isinstance(answer, (int, np.integer)) or (isinstance(answer, str) and answer.isdigit()):
        answer = LETTERS[int(answer)]
      answer = str(answer).strip().strip("()").upper()
      if answer not in LETTERS[:len(choices)]:
        raise ValueError(f"--data {path}: row {n + 1}: answer {answer!r} is not one of the "
                         f"{len(choices)} choices")
    out.append({"id": qid, "question": str(question).strip(), "choices": [str(c) for c in choices],
                "answer": answer, "subject": str(row.get("subject", "")).replace("_", " ")})
  return out


def question_prompt(q: dict) -> str:
  options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(q["choices"]))
  about = f" about {q['subject']}" if q.get("subject") else ""
  return QUESTION_PROMPT.format(about=about, question=q["question"], options=options)


def build_prompt(task: str, q: dict, passages: Sequence[str] = ()) -> str:
  """MMLU: passages joined by blank lines before the prompt; GPQA: "Passage i:" blocks."""
  if not passages:
    return question_prompt(q)
  if task == "gpqa":
    context = "\n\n".join(f"Passage {i}: {p}" for i, p in enumerate(passages, 1))
  else:
    context = "\n\n".join(passages)
  return f"{context}\n\n{question_prompt(q)}"


_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\(?\**\s*([A-J])\b\)?", re.IGNORECASE)
_ANSWER_COLON = re.compile(r"answer\s*:\s*\(?\**\s*([A-J])\b", re.IGNORECASE)


def parse_answer(text, num_choices: int) -> str | None:
  """The letter of the last "the answer is (X)" (else the last "Answer: X"); None if absent."""
  if not isinstance(text, str):
    return None
  for pattern in (_ANSWER_IS, _ANSWER_COLON):
    found = [m.group(1).upper() for m in pattern.finditer(text)]
    found = [f for f in found if f in LETTERS[:num_choices]]
    if found:
      return found[-1]
  return None


def load_datastore(directory: str) -> tuple[list[str], list[str]]:
  paths = sorted(glob.glob(os.path.join(directory, "*.jsonl")))
  if not paths:
    raise FileNotFoundError(f"--datastore {directory}: no *.jsonl files (rows of id, text)")
  ids, texts = [], []
  for row in bright_data.read_rows(paths):
    text = row.get("text", row.get("content"))
    if text is None or "id" not in row:
      raise KeyError(f"--datastore {directory}: every row needs 'id' and 'text' (got {sorted(row)})")
    ids.append(str(row["id"]))
    texts.append(str(text))
  return ids, texts


def retrieve_passages(encoder, model_key: str, questions: Sequence[dict], ids, texts, *, k: int,
                      instruction: str, cache_dir: str, max_length: int = 2048,
                      batch_size: int = 32) -> list[list[str]]:
  key = {"model": model_key, "datastore": cache.corpus_fingerprint(ids, texts), "max_length": max_length,
         "template": "document", "dtype": str(getattr(getattr(encoder, "model_cfg", None), "dtype", ""))}
  store = cache.EmbeddingCache(cache_dir, key, name=f"datastore-{max_length}")
  emb = store.get_or_encode(texts, lambda t: encoder.encode(list(t), instruction=None, batch_size=batch_size,
                                                            max_length=max_length, show_progress=False))
  q_emb = encoder.encode([q["question"] for q in questions], instruction=instruction,
                         batch_size=batch_size, max_length=max_length)
  _, idx = retrieval.exact_top_k(np.asarray(q_emb), emb, min(k, len(ids)),
                                 mesh=getattr(encoder, "mesh", None))
  return [[texts[i] for i in row if i >= 0] for row in idx]


def answer_questions(backend, task: str, questions: Sequence[dict], passages: Sequence[Sequence[str]] | None,
                     *, max_tokens: int = 1024, seed: int = 0) -> tuple[float, list[dict]]:
  """Accuracy and per-question rows; an unparsed answer counts as wrong."""
  from data_gen.backends import SamplingParams
  sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=seed)
  prompts = [build_prompt(task, q, passages[i] if passages else ()) for i, q in enumerate(questions)]
  answers = backend.chat([[{"role": "user", "content": p}] for p in prompts], sampling)
  rows, correct = [], 0
  for q, a in zip(questions, answers):
    pred = parse_answer(a, len(q["choices"]))
    correct += pred == q["answer"]
    rows.append({"id": q["id"], "answer": q["answer"], "prediction": pred,
                 "output": a if isinstance(a, str) else f"FAILED: {a.reason}"})
  return correct / max(len(questions), 1), rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=("mmlu", "gpqa"), required=True)
  parser.add_argument("--data", required=True, help="questions, JSON lines")
  parser.add_argument("--datastore", required=True, help="directory of *.jsonl passages (id, text)")
  parser.add_argument("--model", required=True, help="retriever: HF directory or training workdir")
  parser.add_argument("--k", type=int, default=0,
                      help="passages per question (default 3 for mmlu, 5 for gpqa)")
  parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION,
                      help="retrieval instruction of the questions")
  parser.add_argument("--max-length", type=int, default=2048)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--mesh", default="1,-1,1", help="device mesh data,fsdp,tensor (-1: the rest)")
  parser.add_argument("--max-tokens", type=int, default=1024, help="generation budget per answer")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--cache-dir", default="", help="embedding cache (default DATASTORE/.embedding_cache)")
  parser.add_argument("--out", default="", help="directory for rag_<task>.json")
  llm.add_backend_flags(parser, required=True, what="the reader LLM")
  llm.add_base_url_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  try:
    questions = load_questions(args.data, args.task, args.seed)
    ids, texts = load_datastore(args.datastore)
    backend = llm.make_backend_from_args(args)
  except (ValueError, KeyError, FileNotFoundError) as e:
    parser.error(str(e))
  k = args.k or (5 if args.task == "gpqa" else 3)
  from reasonir_jax.eval.bright import load_encoder
  encoder = load_encoder(args.model, args.dtype, args.mesh)
  passages = retrieve_passages(encoder, cache.model_fingerprint(args.model), questions, ids, texts, k=k,
                               instruction=args.instruction,
                               cache_dir=args.cache_dir or os.path.join(args.datastore, ".embedding_cache"),
                               max_length=args.max_length, batch_size=args.batch_size)
  try:
    closed, closed_rows = answer_questions(backend, args.task, questions, None, max_tokens=args.max_tokens,
                                           seed=args.seed)
    rag, rag_rows = answer_questions(backend, args.task, questions, passages, max_tokens=args.max_tokens,
                                     seed=args.seed)
  finally:
    backend.close()
  result = {"task": args.task, "num_questions": len(questions), "k": k,
            "accuracy_closed_book": closed, "accuracy_with_retrieval": rag}
  print(f"{args.task}: {len(questions)} questions, accuracy closed-book {100 * closed:.1f}% -> "
        f"with top-{k} retrieval {100 * rag:.1f}%")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rag_{args.task}.json"), "w") as f:
      json.dump(result | {"closed_book": closed_rows, "with_retrieval": rag_rows,
                          "passages": passages}, f, indent=1)
  return result


if __name__ == "__main__":
  main()
