"""`--prompt-style public`: prompts that follow the structure of the public ReasonIR
synthetic-data prompts, written in our own words.

Structure kept from the public code (facts, not text):
- HQ: a system prompt that asks for N standalone, reasoning-intensive questions, each with its
  own scenario, answerable with the document as supporting evidence; lists of what every
  question must and must not do; "domain alignment" steps (before writing: name the domain,
  pull out the key concepts and principles, list the field's usual problem-solving patterns;
  while writing: domain settings, the field's terminology used naturally, its typical
  approaches, theory tied to practice); the model works step by step and only then gives the
  questions as JSON under "hard_query". The user turn carries the document in <document> tags.
  No schema-constrained decoding (it would forbid the reasoning before the JSON); the JSON is
  taken from after the reasoning. A question may come as {"scenario", "question"}; the two are
  joined with a space, as the public code does.
- Hard negatives: one turn built from the instruction + query and the instruction + positive
  document; the model may reason first and ends with JSON under "hard_negative_document".

The wording is a prompt-file Spec per stage ("hq-public", "negatives-public";
docs/prompt_files.md): with `--prompt-style public --prompt-file FILE` a user who has the public
text runs with it.
"""
from __future__ import annotations

from reasonir_jax.llm.types import Message
from reasonir_jax.llm import prompt_file

HQ_QUERIES_PUBLIC = "hq_queries_public_v1"
NEG_PUBLIC = "hard_negative_public_v1"


HQ_PUBLIC_PROMPTS = prompt_file.Spec("hq-public", {
    "system": prompt_file.Field(
        "# Task\n"
        "Write {n} questions that need real reasoning, each built around its own scenario, "
        "starting from the document you will be given{field_note}. Every question has to make "
        "sense to someone who never saw the document, yet the document should serve as "
        "evidence when working out the answer. The questions should exercise the central "
        "ideas and principles of the field the document belongs to.\n\n"
        "# What each question needs\n"
        "1. Every question has to:\n"
        "- carry its full situation or background inside itself\n"
        "- be solvable by careful logic and critical thinking\n"
        "- stay meaningful even if the document had never been written\n"
        "- call for analysis, judgement or synthesis rather than memory\n"
        "- belong to the document's field without being tied to this one document\n"
        "- use the concepts, vocabulary and principles of that field\n"
        "- test how problems are actually solved in that field\n"
        "2. No question may:\n"
        "- point to the document or what it says\n"
        "- be settled by recalling a single fact\n"
        "- depend on details that only this document contains\n"
        "- be a reading-comprehension question\n"
        "- wander away from the document's subject area\n\n"
        "# Aligning with the domain\n"
        "First, before writing any question:\n"
        "1. Name the main field (for example software engineering, medicine, finance).\n"
        "2. Pick out the document's key concepts and principles.\n"
        "3. Note the problem-solving patterns people in this field commonly use.\n"
        "Then, while writing the questions:\n"
        "1. Set each scenario in a context typical of the field.\n"
        "2. Use the field's technical terms where they fit naturally.\n"
        "3. Centre the questions on the approaches the field typically takes.\n"
        "4. Tie the theory to practical use inside the field.\n\n"
        "Work through these steps one at a time. When done, give all questions, each with "
        'its scenario, as JSON with the single key "hard_query", for example:\n'
        '```json\n{{"hard_query": ["<question 1>", "<question 2>"]}}\n```',
        allowed={"n", "field_note", "domain"}),
    "user": prompt_file.Field(
        "Here is the document:\n\n<document>\n{document}\n</document>\n\nBegin writing the questions.",
        required={"document"}),
})


def hq_queries_public(document: str, n: int, domain: str | None, prompts=None) -> list[Message]:
  """`prompts`: the "hq-public" wording in force (default ours)."""
  prompts = prompts or HQ_PUBLIC_PROMPTS.defaults()
  note = f" (the document is from {domain})" if domain else ""
  system = prompts.render("system", n=n, field_note=note, domain=domain or "")
  return [{"role": "system", "content": system},
          {"role": "user", "content": prompts.render("user", document=document)}]


def _with_instruction(instruction: str, text: str) -> str:
  return f"{instruction}\n{text}" if instruction else text


NEGATIVES_PUBLIC_PROMPTS = prompt_file.Spec("negatives-public", {
    "user": prompt_file.Field(
        "You are building a hard test for a retrieval system. Below are a search query and a "
        "document that truly helps with it, each preceded by its retrieval instruction when it "
        "has one.\n\n"
        "<query>\n{query}\n</query>\n\n"
        "<relevant_document>\n{positive}\n"
        "</relevant_document>\n\n"
        "Think first about what the query really needs and which ideas in the relevant document "
        "meet that need. Then write a new document of at least "
        "{min_words} words that a quick reader would judge relevant (same subject, similar "
        "setting and vocabulary of the field) but that does not help answer the query, because "
        "it lacks those ideas. Share as few words and phrases with the relevant document as you "
        "can, and do not mention the query or the other document.\n\n"
        "You may reason before answering; end your reply with JSON:\n"
        '```json\n{{"hard_negative_document": "<the document>"}}\n```',
        allowed={"min_words"}, required={"query", "positive"}),
})


def negative_public(query_instruction: str, query: str, positive_instruction: str,
                    positive: str, min_words: int, prompts=None) -> list[Message]:
  """`prompts`: the "negatives-public" wording; {query} and {positive} carry their instructions."""
  prompts = prompts or NEGATIVES_PUBLIC_PROMPTS.defaults()
  return [{"role": "user", "content": prompts.render(
      "user", query=_with_instruction(query_instruction, query),
      positive=_with_instruction(positive_instruction, positive), min_words=min_words)}]
