"""--prompt-style public (HQ and hard negatives), the public BM25 miner (constants and a worked
example) and the written negative replacing the list."""
import json

from data_gen.parsing import extract_json_object
from data_gen.pipelines.hq import HQPipeline
from data_gen.pipelines.mine import MinePipeline
from data_gen.pipelines.negatives import NegativesPipeline
from data_gen.runner import Generation
from data_gen.testing import ScriptedChatServer
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import SamplingParams

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


def test_mine_defaults_are_the_public_miner_constants():
  from data_gen.cli import build_parser
  from data_gen.pipelines import mine
  assert (mine.TOP_K, mine.START_INDEX) == (1000, 20)
  args = build_parser().parse_args(["mine", "--input", "x", "--output-dir", "o"])
  assert (args.top_k, args.start_index, args.bm25, args.skip_zero_scores, args.k1, args.b) == (
      1000, 20, "reference", False, 0.9, 0.4)
  args = build_parser().parse_args(["negatives", "--input", "x", "--output-dir", "o"])
  assert args.append_negative is False  # the written negative replaces the list
  pipe = MinePipeline([{"id": "d", "text": "a document"}])
  assert (pipe.top_k, pipe.start_index, pipe.protocol, pipe.skip_zero_scores) == (
      1000, 20, "reference", False)


def _equal_length_corpus():
  """30 documents of 10 tokens; d25..d29 hold the one-character word "x" 5, 4, 3, 2, 1 times,
  the others never. BM25 order for the query "x", worked by hand: d25, d26, d27, d28, d29 (equal
  lengths: the score grows with tf), then the 25 zero-score documents in corpus order d0..d24."""
  docs = []
  for k in range(30):
    hits = 30 - k if k >= 25 else 0
    docs.append({"id": f"d{k}", "text": " ".join(["x"] * hits +
                                                [f"filler{k}w{j}" for j in range(10 - hits)])})
  return docs


def test_mine_worked_example_first_non_gold_from_index_20_zero_scores_allowed():
  corpus = _equal_length_corpus()
  pipe = MinePipeline(corpus)
  scores, ranking = pipe.index.search(["x"], 1000)
  assert [corpus[i]["id"] for i in ranking[0][:7]] == ["d25", "d26", "d27", "d28", "d29", "d0",
                                                       "d1"]
  assert scores[0][4] > 0 and scores[0][5] == 0
  # 0-based index 20 is d15 (5 scored documents, then d0..d14 at indices 5..19).
  row = TrainingRow(row_id="r", source="hq", query="x", positives=[corpus[25]["text"]])
  [outcome] = pipe.process([row])
  assert outcome.rows[0].negatives == [corpus[15]["text"]]
  meta = json.loads(outcome.rows[0].metadata)["mined_negative"]
  assert (meta["indices"], meta["doc_ids"], meta["scores"]) == ([20], ["d15"], [0.0])
  # A gold document at index 20 is passed over: index 21, d16.
  gold = TrainingRow(row_id="g", source="hq", query="x", positives=[corpus[15]["text"]])
  [outcome] = pipe.process([gold])
  assert outcome.rows[0].negatives == [corpus[16]["text"]]
  # Skipping zero scores (our earlier miner's rule) leaves nothing at index >= 20.
  [outcome] = MinePipeline(corpus, skip_zero_scores=True).process([row])
  assert outcome.reject is not None and "non-zero score" in outcome.reject["reason"]
  # bm25s's tokens drop the one-character "x": every document scores 0 there.
  scores, _ = MinePipeline(corpus, protocol="ours").index.search(["x"], 30)
  assert not scores.any()


def test_mine_searches_the_top_1000():
  # A query no document matches ranks the corpus in its own order; with documents 20..999 gold,
  # the only non-gold document past index 20 is d1000, outside the top 1000.
  corpus = [{"id": f"d{k}", "text": f"word{k}"} for k in range(1001)]
  row = TrainingRow(row_id="r", source="hq", query="unmatched",
                    positives=[d["text"] for d in corpus[20:1000]])
  [outcome] = MinePipeline(corpus).process([row])
  assert outcome.reject is not None and "top 1000 searched" in outcome.reject["reason"]
  [outcome] = MinePipeline(corpus, top_k=1001).process([row])
  assert outcome.rows[0].negatives == ["word1000"]


def test_written_negative_replaces_the_list_by_default():
  negative = " ".join(f"token{i}" for i in range(40))
  row = TrainingRow(row_id="r", source="hq", query=_Q, positives=["Competitive inhibition."],
                    negatives=["a mined negative", "another"])
  with ScriptedChatServer(lambda req: json.dumps({"hard_negative_document": negative})) as server:
    gen = _gen(server)
    [replaced] = NegativesPipeline(gen, min_words=30, prompt_style="public").process([row])
    [appended] = NegativesPipeline(gen, min_words=30, prompt_style="public",
                                   append=True).process([row])
    gen.backend.close()
  assert replaced.rows[0].negatives == [negative]
  assert appended.rows[0].negatives == ["a mined negative", "another", negative]
  meta = json.loads(replaced.rows[0].metadata)["hard_negative"]
  assert (meta["negatives"], meta["negatives_before"]) == ("replace", 2)
