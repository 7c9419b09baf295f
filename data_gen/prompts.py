"""Every prompt the generators send, with its name (recorded in each row's metadata) and the JSON
schema of the expected answer. Change a prompt's text => bump its version suffix, so rows made
with different prompts stay distinguishable.

The wording is ours. Each stage's wording is a prompt-file Spec (HQ_PROMPTS, VL_PROMPTS,
NEGATIVES_PROMPTS; docs/prompt_files.md), so `--prompt-file` can replace it; the schemas and the
retry feedback stay here in code. A run with another wording records its fingerprint.
"""
from __future__ import annotations

from reasonir_jax.llm.types import Message
from reasonir_jax.llm import prompt_file

SYSTEM = ("You create training data for a search engine that must find documents useful for "
          "hard, reasoning-intensive questions. Follow the output format exactly: reply with a "
          "single JSON object and nothing else.")


def _schema(properties: dict) -> dict:
  return {"type": "object", "properties": properties, "required": sorted(properties),
          "additionalProperties": False}


def query_instruction(domain: str | None, kind: str = "question") -> str:
  """The retrieval instruction of a synthetic query (BRIGHT style, see README)."""
  subject = f"{domain} {kind}" if domain else kind
  return f"Given a {subject}, retrieve relevant passages that help answer the {kind}"


# --- HQ: reasoning-intensive queries from a seed document -----------------------------------
HQ_QUERIES = "hq_queries_v1"


def hq_queries_schema(n: int) -> dict:
  return _schema({"hard_query": {"type": "array", "items": {"type": "string"},
                                 "minItems": n, "maxItems": n}})


HQ_PROMPTS = prompt_file.Spec("hq", {
    "system": prompt_file.Field(SYSTEM),
    "user": prompt_file.Field(
        "Read the reference material{in_domain} below. Write {n} different questions that a "
        "person could face in a realistic situation, where working out the answer needs the "
        "concepts, principles or methods explained in the material, applied with several "
        "steps of reasoning.\n"
        "Rules for every question:\n"
        "- Describe a concrete scenario (a problem at work, an observation, an experiment, "
        "a design decision) in a few sentences, then ask about it.\n"
        "- It must stand on its own: never mention the material, a document, a passage or "
        "an author.\n"
        "- Do not ask to recall a fact, a definition or a number stated in the material; "
        "the material should help by explaining why or how, not by containing the answer "
        "verbatim.\n"
        "- Use different wording from the material; do not copy its sentences.\n\n"
        "Reference material:\n<<<\n{document}\n>>>\n\n"
        'Reply with JSON: {{"hard_query": [<{n} questions as strings>]}}',
        allowed={"in_domain", "domain"}, required={"document", "n"}),
})


def hq_queries(document: str, n: int, domain: str | None, prompts=None) -> list[Message]:
  """`prompts`: the "hq" wording in force (default ours)."""
  prompts = prompts or HQ_PROMPTS.defaults()
  user = prompts.render("user", document=document, n=n, domain=domain or "",
                        in_domain=f" in {domain}" if domain else "")
  return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


# --- VL: varied-length queries, then a positive document for each ----------------------------
VL_QUERY = "vl_query_v1"
VL_QUERY_SCHEMA = _schema({"query": {"type": "string"}})


VL_PROMPTS = prompt_file.Spec("vl", {
    "system": prompt_file.Field(SYSTEM),
    "query": prompt_file.Field(
        "Write one long, detailed request for help{about_domain}, of {min_words} to {max_words} "
        "words, the kind a person posts on an expert forum: explain the background and the "
        "situation, what was already tried or observed, relevant details and constraints, "
        "and end with the question that needs reasoning to resolve. Take the subject from "
        "the seed text below, but do not mention the seed text, and do not copy from it.\n\n"
        "Seed text:\n<<<\n{seed}\n>>>\n\n"
        'Reply with JSON: {{"query": "<the request, {min_words}-{max_words} words>"}}',
        allowed={"about_domain", "domain"}, required={"seed", "min_words", "max_words"}),
    "positive": prompt_file.Field(
        "Below is a request for help. Write a document (like a textbook section, a technical "
        "article or an expert's explanation) that someone would be glad to find when trying "
        "to answer it: it explains the concepts and reasoning needed. It must read as an "
        "independent document, not as a reply: do not address the asker and do not restate "
        "the request. Length: {min_words} to {max_words} words.\n\n"
        "Request:\n<<<\n{query}\n>>>\n\n"
        'Reply with JSON: {{"positive_document": "<the document>"}}',
        allowed={"min_words", "max_words"}, required={"query"}),
})


def vl_query(seed: str, min_words: int, max_words: int, domain: str | None,
             prompts=None) -> list[Message]:
  """`prompts`: the "vl" wording in force (default ours)."""
  prompts = prompts or VL_PROMPTS.defaults()
  user = prompts.render("query", seed=seed, min_words=min_words, max_words=max_words,
                        domain=domain or "", about_domain=f" about {domain}" if domain else "")
  return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


VL_POSITIVE = "vl_positive_v1"
VL_POSITIVE_SCHEMA = _schema({"positive_document": {"type": "string"}})


def vl_positive(query: str, min_words: int, max_words: int, prompts=None) -> list[Message]:
  prompts = prompts or VL_PROMPTS.defaults()
  user = prompts.render("positive", query=query, min_words=min_words, max_words=max_words)
  return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


# --- Hard negatives: two turns (analyse, then write the distractor) --------------------------
NEG_ANALYSIS = "hard_negative_analysis_v1"
NEG_DOCUMENT = "hard_negative_document_v1"
NEG_DOCUMENT_SCHEMA = _schema({"hard_negative_document": {"type": "string"}})


NEGATIVES_PROMPTS = prompt_file.Spec("negatives", {
    "analysis_system": prompt_file.Field(
        "You help build a difficult test for a search engine. Answer in plain prose."),
    "analysis": prompt_file.Field(
        "Query:\n<<<\n{query}\n>>>\n\nRelevant document:\n<<<\n{positive}\n>>>\n\n"
        "In a short paragraph: what does the query really need, which ideas in the document "
        "meet that need, and which surface topics or keywords does the query share with "
        "documents that would NOT help?", required={"query", "positive"}),
    "document": prompt_file.Field(
        "Now write a new document of at least {min_words} words that a quick reader "
        "would take as relevant to the query (same subject area, similar setting), but "
        "that does not help answer it: it must lack the ideas you identified as needed. "
        "Use your own vocabulary: share as few words and phrases with the relevant "
        "document as possible, and do not mention the query or the other document.\n\n"
        'Reply with JSON: {{"hard_negative_document": "<the document>"}}', allowed={"min_words"}),
})


def negative_analysis(query: str, positive: str, prompts=None) -> list[Message]:
  """`prompts`: the "negatives" wording in force (default ours)."""
  prompts = prompts or NEGATIVES_PROMPTS.defaults()
  return [{"role": "system", "content": prompts["analysis_system"]},
          {"role": "user", "content": prompts.render("analysis", query=query, positive=positive)}]


def negative_document(analysis_messages: list[Message], analysis: str,
                      min_words: int, prompts=None) -> list[Message]:
  prompts = prompts or NEGATIVES_PROMPTS.defaults()
  return [*analysis_messages,
          {"role": "assistant", "content": analysis},
          {"role": "user", "content": prompts.render("document", min_words=min_words)}]


# --- Judge: a score per training row, mapped to its loss weight ---------------------------------
JUDGE = "judge_score_v1"
JUDGE_MIN_SCORE, JUDGE_MAX_SCORE = 1, 5
JUDGE_SCHEMA = _schema({"reasoning": {"type": "string"},
                        "score": {"type": "integer", "minimum": JUDGE_MIN_SCORE, "maximum": JUDGE_MAX_SCORE}})

JUDGE_PROMPTS = prompt_file.Spec("judge", {
    "system": prompt_file.Field(
        "You grade training examples for a search engine that must find documents useful for "
        "hard, reasoning-intensive questions. Reply with a single JSON object and nothing else."),
    "user": prompt_file.Field(
        "Search instruction: {instruction}\n\n"
        "Query:\n<<<\n{query}\n>>>\n\nDocument given as relevant:\n<<<\n{positive}\n>>>\n\n"
        "Grade this pair as a training example, from 1 to 5:\n"
        "1 - the document does not help answer the query, or only repeats its keywords;\n"
        "2 - it helps a little, and the link is plain from shared words;\n"
        "3 - it helps, and seeing why takes one step beyond matching words;\n"
        "4 - it helps clearly, and seeing why takes several steps of reasoning about the "
        "query's underlying problem;\n"
        "5 - it supplies the concept, principle or method the query needs, and only careful "
        "reasoning about the problem reveals the link.\n"
        "First explain your grade in two or three sentences, then give it.\n"
        'Reply with JSON: {{"reasoning": "<your explanation>", "score": <1 to 5>}}',
        required={"query", "positive"}, allowed={"instruction"}),
})


def judge_messages(instruction: str, query: str, positive: str, prompts=None) -> list[Message]:
  """`prompts`: the "judge" wording in force (default ours)."""
  prompts = prompts or JUDGE_PROMPTS.defaults()
  user = prompts.render("user", instruction=instruction or "(none)", query=query, positive=positive)
  return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


def custom_wording(prompts, spec) -> dict:
  """{"prompt_fingerprint": ...} when `prompts` is not the spec's default wording, else {}: added
  to a run's settings (checked on resume) and rows' metadata, so two wordings never mix while
  runs with our wording keep the settings they had before prompt files existed."""
  if prompts is None or prompts.fingerprint == spec.defaults().fingerprint:
    return {}
  return {"prompt_fingerprint": prompts.fingerprint}


# --- Retries ----------------------------------------------------------------------------------
def retry_feedback(reason: str, keys: list[str]) -> Message:
  """The follow-up turn after an answer that failed validation."""
  shape = ", ".join(f'"{k}"' for k in keys)
  return {"role": "user", "content": (
      f"That answer could not be used: {reason}. Reply again with only a JSON object with "
      f"the key(s) {shape}, following every rule above.")}
