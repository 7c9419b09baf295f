"""Retrieval-augmented multiple-choice QA (docs/reference.md section 8): MMLU or GPQA, answered by an
LLM closed-book and with the top-k passages of a datastore retrieved by our encoder.

    python -m reasonir_jax.eval.rag --task mmlu --data mmlu.jsonl --datastore DATASTORE \\
        --model RETRIEVER --backend openai --backend-model M --base-url U [--k 3] [--out OUT]

`--protocol reference` (the default) follows the public ReasonIR RAG code (eval/protocol.py): its
prompt layout and order (a system message, then the user turn; MMLU's ends "Answer: Let's think
step by step."), sampling (MMLU greedy and stopping at "Question:", GPQA temperature 0.7 / top-p
0.8 and a frequency penalty of 1.0), answer extraction (MMLU: first "answer is (X)", then "Answer:
X", then the last lone letter, else a seeded random guess; GPQA: the last \\boxed{...}) and scoring,
an answer cut off at the token limit parsed like any other; k is 3 for MMLU and 5 for GPQA. The
prompt wording is ours, modelled on the public structure; `--prompt-file FILE` supplies another
(the public text, say: docs/prompt_files.md, stage "rag").
`--protocol ours` keeps our earlier prompt and parser.

`--data` is JSON lines: `question`, `choices` (list; or `options`), `answer` (letter or 0-based
index), optional `id`, `subject`; GPQA's own fields (`Question`, `Correct Answer`,
`Incorrect Answer 1..3`; choices shuffled with a fixed seed) or Search-o1's (`Question` with the
options inside, `Correct Choice`) work too. `--datastore` is a directory built by
`python -m reasonir_jax.eval.datastore` or a directory of corpus files (JSON lines / parquet),
pooled and deduplicated on the fly; its embeddings are cached (resumable). Reports accuracy
without and with retrieval (and writes `OUT/rag_<task>.json`). The shipped sample runs with
`--data sample --datastore sample`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
from typing import Sequence

import numpy as np

from reasonir_jax.eval import bright_data, cache, datastore, protocol
from reasonir_jax.llm import flags as llm_flags
from reasonir_jax.llm import prompt_file
from reasonir_jax.llm.types import SamplingParams

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
DEFAULT_INSTRUCTION = "Given a question, retrieve relevant passages that help answer the question"
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "rag_sample")

QUESTION_PROMPT = """The following is a multiple choice question{about}. Think step by step and then finish your answer with "the answer is (X)" where X is the correct letter choice.

Question: {question}
Options:
{options}
Answer: Let's think step by step."""


def load_questions(path: str, task: str, seed: int = 0) -> list[dict]:
  """Rows with id, question, choices, answer (a letter), subject (spaces) and subject_raw."""
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
    elif "Correct Choice" in row:  # Search-o1's GPQA layout: the options are inside the question
      question, choices, answer = row.get("Question"), [], str(row["Correct Choice"]).strip().upper()
      if question is None or answer not in "ABCD":
        raise KeyError(f"--data {path}: row {n + 1} needs Question and a Correct Choice A-D")
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
    subject = str(row.get("subject", ""))
    out.append({"id": qid, "question": str(question).strip(), "choices": [str(c) for c in choices],
                "answer": answer, "subject": subject.replace("_", " "), "subject_raw": subject})
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


def retrieval_query(q: dict) -> str:
  """The retriever's query: the question with its options (the public MMLU retrieval keys are the
  formatted question with its lettered options)."""
  if not q["choices"]:
    return q["question"]
  return q["question"] + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(q["choices"]))


def load_datastore(directory: str) -> tuple[list[str], list[str]]:
  """Passage ids and texts of a datastore directory (see `datastore.Datastore.load`)."""
  store = datastore.Datastore.load(directory)
  return store.ids, store.texts


def retrieve_passages(encoder, model_key: str, questions: Sequence[dict], store, texts=None, *, k: int,
                      instruction: str, cache_dir: str = "", max_length: int = 2048,
                      batch_size: int = 32, cache_dtype: str = cache.DEFAULT_STORAGE_DTYPE) -> list[list[str]]:
  """The top-k passage texts of every question from a `datastore.Datastore` (or its ids, texts)."""
  if texts is not None:
    store = datastore.Datastore(cache_dir, list(store), list(texts))
  idx = store.search(encoder, model_key, [retrieval_query(q) for q in questions], k,
                     instruction=instruction, max_length=max_length, batch_size=batch_size,
                     cache_dir=cache_dir, cache_dtype=cache_dtype)
  return [[store.texts[i] for i in row] for row in idx]


def reference_prompt(task: str, q: dict, passages: Sequence[str] = (), prompts=None) -> str:
  """The user turn of the reference protocol; `prompts`: the "rag" wording (default ours)."""
  if task == "mmlu":
    return protocol.mmlu_prompt(q["question"], q["choices"], q.get("subject_raw", ""), passages, prompts)
  text = q["question"] if not q["choices"] else protocol.gpqa_question_text(q["question"], q["choices"])
  return protocol.gpqa_prompt(text, passages, prompts)


def reference_messages(task: str, q: dict, passages: Sequence[str] = (), prompts=None) -> list[dict]:
  """The system message and the user turn, as the public code sends them."""
  return protocol.rag_messages(task, reference_prompt(task, q, passages, prompts), prompts)


def reference_sampling(task: str, max_tokens: int | None, seed: int):
  params = dict(protocol.MMLU_SAMPLING if task == "mmlu" else protocol.GPQA_SAMPLING)
  if max_tokens:
    params["max_tokens"] = max_tokens
  return SamplingParams(seed=seed, **params)


def score_reference(task: str, q: dict, output: str) -> dict:
  """The prediction and its score as the public scorer computes them."""
  if task == "mmlu":
    pred = protocol.mmlu_extract(output)
    n = len([c for c in q["choices"] if c != "N/A"]) or 4
    return {"prediction": pred, "correct": protocol.mmlu_is_correct(pred, LETTERS.index(q["answer"]), n),
            "guessed": not pred}
  pred = protocol.gpqa_extract(output)
  score = protocol.gpqa_score(pred, q["answer"])
  return {"prediction": pred, "correct": bool(score["acc"]), "exact_match": bool(score["em"]),
          "valid": score["valid"]}


def answer_text(answer, keep_truncated: bool) -> tuple[str, bool]:
  """The text to parse and whether it was cut off at the token limit: with `keep_truncated`, a
  "length" failure's text so far (the public code parses it); any other failure is ""."""
  if isinstance(answer, str):
    return answer, False
  if keep_truncated and answer.kind == "length" and answer.text is not None:
    return answer.text, True
  return "", False


def answer_questions(backend, task: str, questions: Sequence[dict], passages: Sequence[Sequence[str]] | None,
                     *, protocol_name: str = "reference", max_tokens: int | None = None,
                     seed: int = 0, prompts=None) -> tuple[float, list[dict]]:
  """Accuracy and per-question rows. `reference`: the public layout (a system message, then the
  prompt; `prompts` the "rag" wording in force, default ours), sampling (MMLU stops at
  "Question:") and scoring, cut-off answers parsed (eval/protocol.py); `ours`: our earlier prompt
  as one user message, greedy, an unparsed or cut-off answer counts as wrong."""
  ctx = [passages[i] if passages else () for i in range(len(questions))]
  if protocol_name == "reference":
    sampling = reference_sampling(task, max_tokens, seed)
    conversations = [reference_messages(task, q, c, prompts) for q, c in zip(questions, ctx)]
    keep_truncated = protocol.RAG_KEEP_TRUNCATED
  else:
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens or 1024, seed=seed)
    conversations = [[{"role": "user", "content": build_prompt(task, q, c)}] for q, c in zip(questions, ctx)]
    keep_truncated = False
  answers = backend.chat(conversations, sampling)
  rows = []
  for q, a in zip(questions, answers):
    text, truncated = answer_text(a, keep_truncated)
    if protocol_name == "reference":
      row = score_reference(task, q, text)
    else:
      pred = parse_answer(text, len(q["choices"]) or 4)
      row = {"prediction": pred, "correct": pred == q["answer"]}
    output = text if isinstance(a, str) or truncated else f"FAILED: {a.reason}"
    rows.append({"id": q["id"], "answer": q["answer"], **row, "output": output, "truncated": truncated})
  return sum(r["correct"] for r in rows) / max(len(rows), 1), rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=("mmlu", "gpqa"), required=True)
  parser.add_argument("--data", required=True, help="questions, JSON lines ('sample': the shipped sample)")
  parser.add_argument("--datastore", required=True,
                      help="datastore directory or directory of corpus files ('sample': the shipped one)")
  parser.add_argument("--model", required=True, help="retriever: HF directory or training workdir")
  parser.add_argument("--protocol", choices=protocol.PROTOCOLS, default="reference",
                      help="reference: the public ReasonIR RAG prompts, sampling and scoring")
  parser.add_argument("--k", type=int, default=0, help="passages per question (default 3 mmlu, 5 gpqa)")
  parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION,
                      help="retrieval instruction of the questions")
  parser.add_argument("--max-length", type=int, default=2048)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--mesh", default="auto", help="device mesh data,fsdp,tensor (-1: the rest), or auto")
  parser.add_argument("--max-tokens", type=int, default=0,
                      help="generation budget per answer (default: the protocol's, 2048 mmlu / 8000 gpqa)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--cache-dir", default="", help="embedding cache (default DATASTORE/embeddings)")
  cache.add_dtype_flag(parser)
  parser.add_argument("--out", default="", help="directory for rag_<task>.json")
  prompt_file.add_flag(parser, "rag (--protocol reference)")
  llm_flags.add_backend_flags(parser, required=True, what="the reader LLM")
  llm_flags.add_base_url_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  data = os.path.join(SAMPLE_DIR, f"{args.task}.jsonl") if args.data == "sample" else args.data
  store_dir = os.path.join(SAMPLE_DIR, "corpus") if args.datastore == "sample" else args.datastore
  cache_dir = args.cache_dir
  if args.datastore == "sample" and not cache_dir:  # the package directory may be read-only
    from reasonir_jax.eval.bright import default_cache_dir
    cache_dir = os.path.join(args.out, "rag_embeddings") if args.out else default_cache_dir()
  try:
    if args.prompt_file and args.protocol != "reference":
      raise ValueError("--prompt-file sets the wording of --protocol reference; --protocol ours has "
                       "its own fixed prompt")
    prompts = prompt_file.load(protocol.RAG_PROMPTS, args.prompt_file)
    questions = load_questions(data, args.task, args.seed)
    store = datastore.Datastore.load(store_dir)
    model_key = cache.model_fingerprint(args.model)
    backend = llm_flags.make_backend_from_args(args)
  except (ValueError, KeyError, FileNotFoundError) as e:
    parser.error(str(e))
  k = args.k or protocol.RAG_TOP_K[args.task]
  from reasonir_jax.eval.bright import load_encoder
  encoder = load_encoder(args.model, args.dtype, args.mesh)
  passages = retrieve_passages(encoder, model_key, questions, store, k=k, instruction=args.instruction,
                               cache_dir=cache_dir, max_length=args.max_length, batch_size=args.batch_size,
                               cache_dtype=args.cache_dtype)
  try:
    kw = dict(protocol_name=args.protocol, max_tokens=args.max_tokens or None, seed=args.seed, prompts=prompts)
    closed, closed_rows = answer_questions(backend, args.task, questions, None, **kw)
    rag, rag_rows = answer_questions(backend, args.task, questions, passages, **kw)
  finally:
    backend.close()
  result = {"task": args.task, "protocol": args.protocol, "num_questions": len(questions), "k": k,
            "num_passages": len(store.ids), "accuracy_closed_book": closed, "accuracy_with_retrieval": rag,
            "prompts": {"source": prompts.source, "fingerprint": prompts.fingerprint}}
  print(f"{args.task} ({args.protocol} protocol): {len(questions)} questions, accuracy closed-book "
        f"{100 * closed:.1f}% -> with top-{k} retrieval {100 * rag:.1f}%")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rag_{args.task}.json"), "w") as f:
      json.dump(result | {"closed_book": closed_rows, "with_retrieval": rag_rows,
                          "passages": passages}, f, indent=1)
  return result


if __name__ == "__main__":
  main()
