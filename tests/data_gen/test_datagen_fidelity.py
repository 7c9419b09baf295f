"""--prompt-style public (HQ and hard negatives) and the public BM25 mining defaults."""
import json

from data_gen.backends import SamplingParams, make_backend
from data_gen.parsing import extract_json_object
from data_gen.pipelines.hq import HQPipeline
from data_gen.pipelines.mine import MinePipeline
from data_gen.pipelines.negatives import NegativesPipeline
from data_gen.runner import Generation
from data_gen.testing import ScriptedChatServer
from reasonir_jax.data.schema import TrainingRow

_Q = "A hospital lab sees enzyme assays slow down when a drug is added; what mechanism explains it?"


def _gen(server):
  backend = make_backend("openai", base_url=server.base_url, model="m")
  return Generation(backend=backend, sampling=SamplingParams(), max_attempts=2)


def test_json_after_reasoning_prefers_the_last_object_with_the_keys():
  text = ('Step 1: the domain is {biochemistry}. Draft: {"note": 1}\n'
          '{"hard_query": ["draft"]}\nFinal:\n```json\n{"hard_query": ["final"]}\n```')
  assert extract_json_object(text, ["hard_query"]) == {"hard_query": ["final"]}
  assert extract_json_object('x {"a": 1} y', ["b"]) == {"a": 1}  # none has it: the first


def test_hq_public_style_prompt_reasoning_and_scenario_questions():
  answer = ("1. The domain is biochemistry. 2. Key concepts: inhibition. 3. Patterns: ...\n"
            "Now the questions.\n```json\n" + json.dumps({"hard_query": [
                {"scenario": "A hospital lab sees enzyme assays slow down.",
                 "question": "What mechanism could explain the drug's effect on the rate?"},
                _Q]}) + "\n```")
  with ScriptedChatServer(lambda req: answer) as server:
    pipe = HQPipeline(_gen(server), queries_per_doc=2, domain="biology", prompt_style="public")
    [outcome] = pipe.process([{"id": "d", "text": "Enzymes and inhibitors. " * 20}])
    pipe.gen.backend.close()
  [req] = server.requests
  assert "response_format" not in req  # reasoning must be allowed before the JSON
  system, user = req["messages"][0]["content"], req["messages"][1]["content"]
  assert "Aligning with the domain" in system and "problem-solving patterns" in system
  assert "biology" in system and "<document>" in user
  assert [r.query for r in outcome.rows] == [
      "A hospital lab sees enzyme assays slow down. What mechanism could explain the drug's "
      "effect on the rate?", _Q]
  assert json.loads(outcome.rows[0].metadata)["prompt"] == "hq_queries_public_v1"


def test_negatives_public_style_is_one_turn_with_instructions():
  negative = " ".join(f"token{i}" for i in range(40))
  with ScriptedChatServer(lambda req: "Reasoning first.\n" + json.dumps(
      {"hard_negative_document": negative})) as server:
    pipe = NegativesPipeline(_gen(server), min_words=30, prompt_style="public")
    row = TrainingRow(row_id="r", source="hq", query=_Q, positives=["Competitive inhibition."],
                      query_instruction="Given a biology question, retrieve passages")
    [outcome] = pipe.process([row])
    pipe.gen.backend.close()
  [req] = server.requests  # a single turn, no analysis step
  assert len(req["messages"]) == 1 and "response_format" not in req
  assert "Given a biology question, retrieve passages\n" + _Q in req["messages"][0]["content"]
  assert outcome.rows[0].negatives == [negative] and set(outcome.steps) == {"negative"}


def test_mine_defaults_follow_the_public_miner():
  # doc k contains the query word k+... times fewer: BM25 order is doc0, doc1, ...
  corpus = [{"id": f"d{k}", "text": " ".join(["running"] * (40 - k) + [f"filler{k}"] * (k + 1))}
            for k in range(30)]
  pipe = MinePipeline(corpus)
  assert (pipe.k1, pipe.b, pipe.min_rank, pipe.stemmer_name) == (0.9, 0.4, 21, "porter")
  row = TrainingRow(row_id="r", source="hq", query="runs", positives=[corpus[0]["text"]])
  [outcome] = pipe.process([row])
  # "runs" only matches "running" through stemming; the 21st document is taken.
  assert outcome.rows[0].negatives == [corpus[20]["text"]]
  unstemmed = MinePipeline(corpus, stemmer=None)
  [outcome] = unstemmed.process([row])
  assert outcome.reject is not None  # nothing matches without stemming
