"""The published evaluation protocols, as facts and prompts in our own words, with their sources.

Each section names the public file every fact comes from. Prompt texts are our wording of what the
public prompt asks for; the parts that a parser depends on (the answer formats) keep their form.
Other variants of a stage stay available by name (`--protocol ours`).
"""
from __future__ import annotations

import random
import re

from reasonir_jax.llm import prompt_file

# =====================================================================================
# Sources of the BRIGHT sections below (BM25, long documents, metrics, rewrite, rerank)
# =====================================================================================
#   [B-ret]    xlang-ai/BRIGHT retrievers.py: retrieval_bm25, get_scores, calculate_retrieval_metrics
#   [B-run]    xlang-ai/BRIGHT run.py (score.json, results.json, qrels, long_context)
#   [B-cfg]    xlang-ai/BRIGHT configs/<model>/<task>.json ("instructions" / "instructions_long")
#   [B-reason] xlang-ai/BRIGHT reason.py (query rewriting)
#   [R-tt]     facebookresearch/ReasonIR test_time_techniques/README.md (rewriting, token limit)
#   [R-qr]     facebookresearch/ReasonIR test_time_techniques/query_rewriting.py (budgeted rewriting)
#   [R-rr]     facebookresearch/ReasonIR evaluation/bright/reranker.py and prompts.py
#   [R-sh]     facebookresearch/ReasonIR evaluation/bright/reranker_script.sh

PROTOCOLS = ("reference", "ours")  # --protocol: the public protocol, or our earlier variants

# --- BM25 [B-ret] ---------------------------------------------------------------------
# Tokens: Pyserini's default Lucene analyzer (Anserini's English analyzer): Unicode word
# segmentation, the possessive 's dropped, lower case, Lucene's English stopword set, Porter
# stemming. One-character tokens are kept ("x = 5" gives "x", "5").
# Scoring: gensim LuceneBM25Model(k1=0.9, b=0.4) over a gensim Dictionary of the corpus, and the
# query bag of words goes through the same model, so each term's score is
#   w(query) * w(doc),   w = idf * tf / (tf + k1 * (1 - b + b * len / avgdl)),
#   idf = ln(N + 1) - ln(df + 0.5)  (Lucene's ln(1 + (N - df + 0.5) / (df + 0.5))),
# with avgdl = corpus tokens / N, len = the text's token count (for a query, only tokens the
# corpus has), tf = the count in that text: idf enters twice and query terms saturate too.
# The score is the plain dot product (SparseMatrixSimilarity without normalisation), every
# document is scored (zero-score ones included), excluded ids are dropped, then the top 1000.
BM25_K1 = 0.9
BM25_B = 0.4
LUCENE_ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split())
PORTER_STEMMER = "porter"  # PyStemmer's Porter algorithm (its "english" is Snowball, not Porter)

# --- Long documents [B-run] [B-cfg] ---------------------------------------------------
# run.py --long_context: corpus long_documents/<task>, gold ids gold_ids_long, and the config's
# "instructions_long", which say "documents" where the short ones say "passages". Long corpora
# exist for the StackExchange tasks and pony only. BRIGHT passes no length limit of its own for
# long documents; ReasonIR evaluates with up to 32768 tokens.
LONG_TASKS = ("biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
              "sustainable_living", "pony")
LONG_MAX_LENGTH = 32768

# --- Retriever input [G-col] ----------------------------------------------------------
# [G-col] ContextualAI/gritlm gritlm/training/data.py (CustomCollator), which ReasonIR trains with.
# The prefix is "<|user|>\n{instruction}\n<|embed|>\n" before a query, "<|embed|>\n" before a
# document; the instruction is stripped of "\t\n :" at both ends, and one that is then empty
# gives the document prefix. BOS + prefix + text is tokenized as one string and cut to max_length
# tokens (the text is cut); the mean leaves out as many leading tokens as BOS + prefix have
# tokenized alone. sentence-transformers' mean Pooling with include_prompt=False counts a prompt
# the same way. Implemented once, in reasonir_jax/tokenization.py (PromptTokenizer).

# --- Metrics and outputs [B-ret] [B-run] ----------------------------------------------
# pytrec_eval with map_cut, ndcg_cut, recall and P at these cut-offs plus recip_rank; each mean
# over the evaluated queries, rounded to 5 decimals, keys "NDCG@k", "MAP@k", "Recall@k", "P@k",
# "MRR". Qrels: gold ids with relevance 1. Per task, run.py writes score.json ({qid: {docid:
# score}}, the top 1000 per query) and results.json (those metrics).
METRIC_CUTOFFS = (1, 5, 10, 25, 50, 100)
METRIC_DECIMALS = 5

# --- Query rewriting [B-reason] [R-tt] [R-qr] -----------------------------------------
# Order: the query with its newlines replaced by spaces, a blank line, an "Instructions:" line,
# then three numbered steps: find the essential problem; reason step by step about what
# information would help, in detail; draft an answer with as many thoughts as possible.
# Sent as chat with a system line "You are a helpful assistant"; temperature 0.8, top_p 0.8.
# [R-tt] runs the rewriting with a 2048-token limit. [R-qr] (ReasonIR's public budgeted version of
# reason.py) states a given budget to the model in a sentence of its own after the three steps
# (BRIGHT's reason.py states none), caps generation at it, and uses an answer that stopped at the
# budget as it was cut, like any other. The budget sentence below is our wording; the budget is in
# tokens, the unit that caps generation.
REWRITE_SYSTEM = "You are a helpful assistant"
REWRITE_PROMPT = ("{query}\n\n"
                  "Instructions:\n"
                  "1. Work out the core problem being asked.\n"
                  "2. Reason through it step by step, describing in detail which information would be "
                  "relevant and useful for addressing the question.\n"
                  "3. Write a draft answer that includes as many of your thoughts as you can.\n")
REWRITE_BUDGET = "Keep your whole answer within {budget} tokens.\n"
REWRITE_SAMPLING = {"temperature": 0.8, "top_p": 0.8, "max_tokens": 2048}
REWRITE_KEEP_CUT = True  # [R-qr] a rewrite cut at the budget replaces the query as it was cut


def rewrite_messages(query: str, budget: int | None, *, system: str = REWRITE_SYSTEM,
                     user: str = REWRITE_PROMPT, budget_sentence: str = REWRITE_BUDGET,
                     instruction: str = "") -> list[dict]:
  """The chat request: the user text, then (when a budget is given) the budget sentence; the
  system line unless it is empty. The keyword arguments take a prompt file's wording."""
  text = user.format(query=query.replace("\n", " "), instruction=instruction)
  if budget:
    text += budget_sentence.format(budget=budget)
  return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


# --- ReasonIR-Rerank [R-rr] [R-sh] ----------------------------------------------------
# Qwen2.5-32B-Instruct through vLLM's generate() on the raw prompt (no chat template), bf16,
# max_model_len 16384; temperature 0.6, top_p 0.9, at most 32 new tokens. The answer text is read
# whatever its finish reason, so an answer cut off at the 32 tokens is parsed like any other. We
# send the raw prompt the same way, through the backend's `complete` (a /v1/completions request,
# vLLM's generate(), or transformers' generate() on the prompt's tokens), keeping cut-off answers.
# Top 100 of the retriever per query (--input_k 100). One prompt per task family: aops, theoremqa_questions,
# theoremqa_theorems (same text as theoremqa_questions), leetcode, pony, and a general one for
# the rest. Each names the query first and the document second, and ends with the answer format
# "Relevance score: X." with X from 0 to 5 and nothing else in the answer. The prompts below are
# ours, modelled on that structure (the public text is not shipped; --prompt-file supplies it);
# the format line keeps its form because the parser depends on it.
# Scoring: the text after the LAST "Relevance score:" -- exactly its next two characters --
# is parsed as a number and divided by 5; no marker scores 0; a parse failure scores -1 on that
# normalised scale (after the division). Final score 0.5 * rerank + 0.5 * retriever score.
# We count a failed request like a parse failure (the public code has no failed requests).
RERANK_MARKER = "Relevance score:"
RERANK_SAMPLING = {"temperature": 0.6, "top_p": 0.9, "max_tokens": 32}
RERANK_SEED = 42  # [R-rr] torch.manual_seed(42); vLLM's sampling itself is unseeded there
RERANK_TOP_K = 100
RERANK_ALPHA = 0.5
RERANK_CHAT = False  # raw prompt, no chat template
RERANK_KEEP_TRUNCATED = True  # an answer cut off at max_tokens is parsed, not a failure
_RERANK_FORMAT = ("Reply in the form 'Relevance score: X.' where X is a whole number from 0 to 5: "
                  "0 means the document is of no use, 5 means it is highly relevant and fully "
                  "addresses the query. Write nothing else.\n")
_SAME_PROCESS = ("We are looking for a document that relies on the same mathematical process as this "
                 "problem:\n{query}\nA document counts as relevant when it uses that same mathematical "
                 "process.\nDocument: {document}\nRate the document above. ")
# The "rerank" prompt file (docs/prompt_files.md): one field per task family, our wording as
# defaults; theoremqa_questions and theoremqa_theorems share the "theoremqa" field (one text in [R-rr]).
RERANK_PROMPTS = prompt_file.Spec("rerank", {
    "aops": prompt_file.Field(
        "We are looking for math problems that differ from, but resemble, this one:\n{query}\n"
        "A document counts as relevant when it works with the same class of functions and shares "
        "**any** technique with it.\nDocument: {document}\nRate the document above. " + _RERANK_FORMAT,
        required={"query", "document"}),
    "theoremqa": prompt_file.Field(_SAME_PROCESS + _RERANK_FORMAT, required={"query", "document"}),
    "leetcode": prompt_file.Field(
        "I want other problems that use similar data structures (any kind) or algorithms "
        "(e.g. DFS, DP, sorting, traversals) -- one or both of these -- as this problem:\n"
        "{query}\nIs the passage below similar in that way? For instance, a textbook of leetcode "
        "problems would put it in the same book, maybe in another chapter.\nPassage: {document}\n"
        "Rate the passage above. " + _RERANK_FORMAT, required={"query", "document"}),
    "pony": prompt_file.Field(
        "I am going to write code in the pony programming language.\nProblem: {query}\n"
        "Solving it needs knowledge of pony. A passage counts as relevant when its documentation "
        "covers any part, however basic, of the code the program will need.\nPassage: {document}\n"
        "Rate the passage above. " + _RERANK_FORMAT, required={"query", "document"}),
    "general": prompt_file.Field(
        "A document is relevant when it holds information that helps answer or address the "
        "query; one that mentions similar topics without such information is not.\n"
        "Is the document below relevant for answering the query below?\n" + _RERANK_FORMAT
        + "The query:\n<start_query>\n{query}\n<end_query>\n"
        "The document:\n<start_document>\n{document}\n<end_document>\n", required={"query", "document"}),
})
_RERANK_FIELD = {"aops": "aops", "theoremqa_questions": "theoremqa", "theoremqa_theorems": "theoremqa",
                 "leetcode": "leetcode", "pony": "pony"}  # every other task: "general"


def rerank_prompt(task: str, query: str, document: str, prompts=None) -> str:
  """The raw prompt; `prompts`: the "rerank" wording in force (default ours)."""
  prompts = prompts or RERANK_PROMPTS.defaults()
  return prompts.render(_RERANK_FIELD.get(task, "general"), query=query, document=document)


def rerank_score(answer) -> float:
  """[R-rr] The normalised relevance: number in the two characters after the last marker / 5;
  0 without a marker; -1 when those characters do not parse (or the request failed)."""
  if not isinstance(answer, str):
    return -1.0
  pos = answer.rfind(RERANK_MARKER)
  if pos == -1:
    return 0.0
  start = pos + len(RERANK_MARKER)
  try:
    return float(answer[start:start + 2]) / 5.0
  except ValueError:
    return -1.0


# (The RAG section follows; it is kept by the RAG side of the evaluation.)

# =====================================================================================
# RAG: MMLU and GPQA (ReasonIR repository, evaluation/rag/)
# =====================================================================================
# Sources (facebookresearch/ReasonIR, evaluation/):
#   [M] rag/mmlu_cot/evaluate_from_local_mmlu.py (derived from MMLU-Pro's evaluate_from_local.py)
#   [M-sh] rag/mmlu_cot/scripts/eval_llama_3_8b_mmlu_rag.sh     (--concat_k 3, Llama-3.1-8B-Instruct)
#   [G] rag/gpqa/src/workflow/naive_rag.py (adapted from Search-o1's naive RAG)
#   [G-doc] rag/gpqa/apis/offline_cached_massiveds_searched_results.py (passage formatting)
#   [G-eval] rag/gpqa/src/eval/evaluate.py (Search-o1's answer extraction and scoring)
#   [G-cfg] rag/gpqa/src/conf/naive_rag_default.yaml; [G-sh] rag/gpqa/scripts/evaluate_naive_rag.sh
#   [G-ins] Search-o1 prompts: get_task_instruction_multi_choice (the non-"qwq", non-"llama" branch)
#   [DS] evaluation/README.md: the datastore pools each benchmark's top-1000 MassiveDS documents,
#        merges and deduplicates them, and embeds them with the retriever (passages up to 2048 tokens,
#        rag/datastore/build_datastore.sh).
# The scripts, configs and README were read in facebookresearch/ReasonIR itself; the Python files
# [M], [G], [G-doc], [G-eval] in a public fork of it (cmpatino/ReasonIR) that adds closed-book
# switches and Qwen3 "/think" / "/no_think" system lines: those additions are left out here.
# Chat: both send a system message and the prompt as the user turn of the model's chat template
# ([M] through apply_chat_template, [G] through the chat-completions endpoint). The public system
# lines are a generic "helpful assistant" sentence (the fork appends Qwen3's "/no_think"); ours say
# the same in our words. Every wording below is a field of the "rag" prompt file (RAG_PROMPTS), so
# the public text can be supplied with --prompt-file; the layout around the fields stays in code.

RAG_TOP_K = {"mmlu": 3, "gpqa": 5}  # [M-sh] --concat_k 3; [G-sh] top_k=5 (the yaml default is 3)
RAG_SYSTEM = "You are an assistant who answers questions helpfully and accurately."
# [M] and [G] read the answer whatever its finish reason: an answer cut off at max_tokens is parsed.
RAG_KEEP_TRUNCATED = True

# --- MMLU [M] -------------------------------------------------------------------------
# Order of the prompt: background block, then the task line (subject substituted as stored, with
# underscores), a newline, then "Question:\n<q>\nOptions:\n" with one "<L>. <option>" line per
# option ("N/A" options dropped), then the chain-of-thought cue "Answer: Let's think step by
# step." (the zero-shot CoT trigger, kept as published: it opens the model's answer). Zero-shot
# (ntrain must be 0). The background block is a header line followed by each of the top-k passage
# texts and a blank line; with no retrieval result the block is empty.
MMLU_BACKGROUND_HEADER = "Relevant background:\n"
MMLU_TASK_LINE = ("Below are multiple-choice questions (with answers) on {subject}. Reason step by step, "
                  "then end with \"the answer is (X)\", where X is the letter of the right option.\n")
MMLU_CUE = "Answer: Let's think step by step."
MMLU_LETTERS = "ABCD"  # [M] choices = ["A", "B", "C", "D"]; every regex below is A-D only
# [M] load_model: temperature 0, at most 2048 new tokens, generation stops at "Question:" (vLLM's
# stop; every backend honours it, and the text after a "Question:" is dropped before parsing as
# well); model context 4096 tokens.
MMLU_STOP = "Question:"
MMLU_SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 2048, "stop": (MMLU_STOP,)}
MMLU_RANDOM_SEED = 12345  # [M] save_res: random.seed(12345) before every guess

# --- GPQA [G] -------------------------------------------------------------------------
# User turn = role line + "\n\n" + "Question:\n<q>\n" + ("Documents:\n<passages>\n" with
# retrieval) + "\n\n" + the multiple-choice instruction [G-ins], which repeats the question. The
# question text carries its lettered options. Passages [G-doc]: "Passage <i>:\n<text>\n\n" for
# i = 1..k, concatenated, outer whitespace stripped. Sent with a system message through the chat
# endpoint (the fork's Qwen3 "/no_think" suffix does not apply to Qwen2.5-7B-Instruct: left out).
GPQA_ROLE_RAG = "You are a knowledgeable assistant; answer the user's question using the documents provided."
GPQA_ROLE_CLOSED = "You are a knowledgeable assistant; answer the user's question."  # the fork's closed book
GPQA_INSTRUCTION = ("Answer the multiple-choice question below. Work through it step by step.\n\n"
                    "Give your final choice as \\boxed{{YOUR_CHOICE}}.\n\n"
                    "Question:\n{question}\n\n")  # a str.format template ({{ }}: literal braces)
GPQA_LETTERS = "ABCD"
# [G-cfg] temperature 0.7, top_p 0.8; [G] max_tokens 8000 on each request, and frequency_penalty set
# to the yaml's repetition_penalty, 1.0: with OpenAI's definition that is not "off" (that would be
# 0) but a penalty of 1 per earlier occurrence of a token in the answer. No presence_penalty, no stop.
GPQA_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "max_tokens": 8000, "frequency_penalty": 1.0}

# The "rag" prompt file (docs/prompt_files.md): our wording as defaults.
RAG_PROMPTS = prompt_file.Spec("rag", {
    "mmlu_system": prompt_file.Field(RAG_SYSTEM),
    "mmlu_user": prompt_file.Field(
        "{background}" + MMLU_TASK_LINE + "\nQuestion:\n{question}\nOptions:\n{options}" + MMLU_CUE,
        allowed={"subject"}, required={"background", "question", "options"}),
    "mmlu_background": prompt_file.Field(MMLU_BACKGROUND_HEADER + "{passages}", required={"passages"}),
    "gpqa_system": prompt_file.Field(RAG_SYSTEM),
    "gpqa_user": prompt_file.Field(
        GPQA_ROLE_RAG + "\n\nQuestion:\n{question}\nDocuments:\n{documents}\n\n\n" + GPQA_INSTRUCTION,
        required={"question", "documents"}),
    "gpqa_user_closed": prompt_file.Field(
        GPQA_ROLE_CLOSED + "\n\nQuestion:\n{question}\n\n\n" + GPQA_INSTRUCTION, required={"question"}),
})


def mmlu_prompt(question: str, options, subject: str, passages=(), prompts=None) -> str:
  """The user turn; `prompts`: the "rag" wording in force (default ours)."""
  prompts = prompts or RAG_PROMPTS.defaults()
  options = [o for o in options if o != "N/A"]
  listed = "".join(f"{MMLU_LETTERS[i]}. {o}\n" for i, o in enumerate(options))
  background = prompts.render("mmlu_background", passages="".join(p + "\n\n" for p in passages)) if passages else ""
  return prompts.render("mmlu_user", background=background, subject=subject, question=question, options=listed)


def rag_messages(task: str, user: str, prompts=None) -> list[dict]:
  prompts = prompts or RAG_PROMPTS.defaults()
  return [{"role": "system", "content": prompts[f"{task}_system"]}, {"role": "user", "content": user}]


_MMLU_FIRST = re.compile(r"answer is \(?([A-D])\)?")
_MMLU_SECOND = re.compile(r".*[aA]nswer:\s*([A-D])")
_MMLU_LAST_LETTER = re.compile(r"\b[A-D]\b(?!.*\b[A-D]\b)", re.DOTALL)


def mmlu_extract(text: str) -> str | None:
  """[M] extract_answer -> extract_again -> extract_final: the first "answer is (X)"; else, on the
  first line holding one, the last "Answer: X" ("answer:" either case); else the last standalone
  capital A-D anywhere; else None. Case-sensitive letters; no DOTALL for the first two."""
  text = text.split(MMLU_STOP, 1)[0]
  m = _MMLU_FIRST.search(text) or _MMLU_SECOND.search(text)
  if m:
    return m.group(1)
  m = _MMLU_LAST_LETTER.search(text)
  return m.group(0) if m else None


def mmlu_is_correct(pred: str | None, answer_index: int, num_options: int) -> bool:
  """[M] save_res: a missing prediction becomes a seeded random guess (the seed is reset for
  every question, so every unparsed question of a given option count gets the same guess)."""
  if not pred:
    random.seed(MMLU_RANDOM_SEED)
    return random.randint(0, num_options - 1) == answer_index
  return pred == MMLU_LETTERS[answer_index]


def gpqa_question_text(question: str, options) -> str:
  return question.strip() + "\n\nChoices:\n" + "\n".join(
      f"({GPQA_LETTERS[i]}) {o}" for i, o in enumerate(options))


def gpqa_passages(passages) -> str:
  return "".join(f"Passage {i}:\n{p}\n\n" for i, p in enumerate(passages, 1)).strip()


def gpqa_prompt(question_text: str, passages=(), prompts=None) -> str:
  """The user turn; `prompts`: the "rag" wording in force (default ours)."""
  prompts = prompts or RAG_PROMPTS.defaults()
  if passages:
    return prompts.render("gpqa_user", question=question_text, documents=gpqa_passages(passages))
  return prompts.render("gpqa_user_closed", question=question_text)


_BOXED = re.compile(r"\\boxed\{(.*)\}")
_TEXT = re.compile(r"\\text\{(.*)\}")


def gpqa_extract(text: str) -> str:
  """[G-eval] extract_answer(mode="choose"): the last \\boxed{...} (greedy within a line), then the
  last \\text{...} inside it, then "(" and ")" stripped from both ends; "" when there is none."""
  found = _BOXED.findall(text)
  if not found:
    return ""
  pred = found[-1]
  inner = _TEXT.findall(pred)
  if inner:
    pred = inner[-1]
  return pred.strip("()")


def _normalize(s: str) -> str:
  return " ".join(s.lower().strip().split())


def gpqa_score(pred: str, gold_letter: str) -> dict:
  """[G-eval] evaluate_predictions: `acc` = the lower-cased gold letter occurs in the normalised
  prediction (the reported accuracy), `em` = equal; `valid` = a one-character prediction."""
  p, g = _normalize(pred), _normalize(gold_letter)
  return {"acc": int(g in p), "em": int(p == g), "valid": pred != "" and len(pred) <= 1}
