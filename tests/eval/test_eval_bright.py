"""BRIGHT harness end to end on a tiny BRIGHT-layout fixture (BM25 and a tiny random model),
and the embedding cache (a second run encodes nothing; an interrupted encoding resumes)."""
import json
import os

import numpy as np
import pytest

from reasonir_jax.eval import bright, bright_data, cache, metrics


def _check_out_dir(out, tasks, examples_by_task):
  results = json.load(open(os.path.join(out, "results.json")))
  assert set(results) == set(tasks) | {"average"}
  for task in tasks:
    assert 0.0 <= results[task]["ndcg@10"] <= 1.0
    run = metrics.read_trec_run(os.path.join(out, f"{task}.run"))
    for e in examples_by_task[task]:
      assert not set(run.get(e.id, {})) & set(e.excluded_ids), (task, e.id)
  assert results["average"]["ndcg@10"] == pytest.approx(np.mean([results[t]["ndcg@10"] for t in tasks]))
  return results


def test_bm25_end_to_end(bright_dir, tmp_path, capsys):
  out = str(tmp_path / "bm25")
  bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", out, "--tasks", "biology,leetcode"])
  examples = {t: bright_data.load_examples(bright_dir, t) for t in ("biology", "leetcode")}
  results = _check_out_dir(out, ["biology", "leetcode"], examples)
  # The fixture's queries share stemmed words with their gold documents.
  assert results["biology"]["ndcg@10"] > 0.6 and results["leetcode"]["ndcg@10"] > 0.6
  table = capsys.readouterr().out
  assert "ReasonIR-8B (pub.)" in table and "26.2" in table and "24.4" in table  # biology, leetcode
  # The excluded near-duplicate of b0's gold would rank first if it were not removed.
  run = metrics.read_trec_run(os.path.join(out, "biology.run"))
  assert metrics.ranked_ids(run["b0"])[0] == "bio_mito"


def test_query_sources(bright_dir, tmp_path):
  reason = bright_data.load_queries(bright_dir, "biology", "gpt4_reason")
  assert reason[0].query.endswith("Reasoning: the relevant concept.")
  assert reason[0].excluded_ids == ["bio_dup"]  # gold/excluded come from examples/
  path = tmp_path / "biology.jsonl"
  path.write_text("".join(json.dumps({"id": i, "query": f"q {i}"}) + "\n" for i in ("b0", "b1", "b2")))
  assert [e.query for e in bright_data.load_queries(bright_dir, "biology", str(tmp_path))] == [
      "q b0", "q b1", "q b2"]
  path.write_text(json.dumps({"id": "b0", "query": "x"}) + "\n")
  with pytest.raises(KeyError, match="no query for 2 example"):
    bright_data.load_queries(bright_dir, "biology", str(path))


def _dense(encoder, bright_dir, cache_dir, chunk_size=2):
  examples = bright_data.load_examples(bright_dir, "biology")
  ids, docs = bright_data.load_documents(bright_dir, "biology")
  return bright.dense_run(encoder, "model-key", "biology", examples, ids, docs, max_length=64, batch_size=4,
                          long_documents=False, cache_dir=cache_dir, chunk_size=chunk_size)


def test_cache_second_run_encodes_nothing(bright_dir, tmp_path, bow_encoder):
  first = bow_encoder()
  run1 = _dense(first, bright_dir, str(tmp_path))
  assert first.texts_encoded == 6 + 3  # corpus + queries
  second = bow_encoder()
  run2 = _dense(second, bright_dir, str(tmp_path))
  assert second.texts_encoded == 3  # queries only
  assert run1 == run2
  assert "bio_dup" not in run1["b0"]


def test_interrupted_encoding_resumes(bright_dir, tmp_path, bow_encoder):
  reference = _dense(bow_encoder(), bright_dir, str(tmp_path / "ref"))
  interrupted = bow_encoder(fail_after_calls=2)  # 6 docs in chunks of 2: dies on the third chunk
  with pytest.raises(KeyboardInterrupt):
    _dense(interrupted, bright_dir, str(tmp_path / "c"))
  (entry,) = os.listdir(tmp_path / "c")
  assert sorted(f for f in os.listdir(tmp_path / "c" / entry) if f.startswith("chunk")) == [
      "chunk_00000.npy", "chunk_00001.npy"]
  resumed = bow_encoder()
  # A different chunk size asked for later still resumes the chunking on disk.
  assert _dense(resumed, bright_dir, str(tmp_path / "c"), chunk_size=4) == reference
  assert resumed.texts_encoded == 2 + 3  # the last chunk + queries


def test_model_fingerprint_follows_latest_checkpoint(tmp_path):
  (tmp_path / "checkpoints" / "500").mkdir(parents=True)
  (tmp_path / "checkpoints" / "500" / "w").write_text("a")
  before = cache.model_fingerprint(str(tmp_path))
  (tmp_path / "events.log").write_text("training logs do not matter")
  assert cache.model_fingerprint(str(tmp_path)) == before
  (tmp_path / "checkpoints" / "1000").mkdir()
  (tmp_path / "checkpoints" / "1000" / "w").write_text("b")
  assert cache.model_fingerprint(str(tmp_path)) != before


def test_dense_end_to_end_tiny_model(bright_dir, tiny_model_dir, tmp_path, monkeypatch):
  try:
    from reasonir_jax.encoder import Encoder
  except ImportError as e:
    pytest.skip(f"reasonir_jax.encoder is not available: {e}")
  documents_encoded = []
  original = Encoder.encode

  def spy(self, texts, instruction=None, **kw):
    if instruction is None:
      documents_encoded.extend(texts)
    return original(self, texts, instruction=instruction, **kw)

  monkeypatch.setattr(Encoder, "encode", spy)
  common = ["--model", tiny_model_dir, "--data", bright_dir, "--tasks", "biology,leetcode", "--dtype", "float32",
            "--max-length", "64", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache")]
  out = str(tmp_path / "dense")
  bright.main(common + ["--out", out])
  examples = {t: bright_data.load_examples(bright_dir, t) for t in ("biology", "leetcode")}
  _check_out_dir(out, ["biology", "leetcode"], examples)
  assert len(documents_encoded) == 6 + 4
  run = metrics.read_trec_run(os.path.join(out, "biology.run"))
  assert len(run["b1"]) == 6 and len(run["b0"]) == 5  # whole corpus minus the excluded id
  # Other queries, same corpus: the cache serves every document embedding.
  bright.main(common + ["--out", str(tmp_path / "dense2"), "--queries", "gpt4_reason", "--tasks", "biology"])
  assert len(documents_encoded) == 6 + 4


def test_outputs_in_the_public_layout(bright_dir, tmp_path):
  out = tmp_path / "o"
  bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(out), "--tasks", "biology"])
  task_dir = out / "biology_bm25_long_False"
  score = json.load(open(task_dir / "score.json"))
  assert set(score) == {"b0", "b1", "b2"} and "bio_dup" not in score["b0"]
  public = json.load(open(task_dir / "results.json"))
  assert public["NDCG@10"] == pytest.approx(round(json.load(open(out / "results.json"))["biology"]["ndcg@10"], 5))
  assert {"NDCG@1", "NDCG@100", "MAP@100", "P@10", "Recall@100", "MRR"} <= set(public)
  assert "b2 0 bio_enzyme 1" in open(out / "qrels" / "biology.qrels").read().splitlines()
  assert "MRR" in json.load(open(out / "results.json"))["average"]


def test_long_document_mode(bright_dir, tmp_path):
  assert bright_data.parse_tasks("all", long_documents=True) == list(bright_data.LONG_TASKS)
  assert len(bright_data.LONG_TASKS) == 8 and "leetcode" not in bright_data.LONG_TASKS
  with pytest.raises(ValueError, match="leetcode has no long documents"):
    bright_data.parse_tasks("biology,leetcode", long_documents=True)
  assert bright_data.query_instruction("biology", long_documents=True) == (
      "Given a biology post, retrieve relevant documents that help answer the post")
  assert bright_data.query_instruction("pony", long_documents=True) == (
      "Given a pony question, retrieve relevant documents that help answer the question")
  with pytest.raises(ValueError, match="no long documents"):
    bright_data.query_instruction("aops", long_documents=True)
  out = tmp_path / "long"
  # `available` with long documents keeps only tasks that have long corpora (biology, not leetcode).
  bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(out), "--tasks", "available",
               "--long-documents"])
  results = json.load(open(out / "results.json"))
  assert set(results) == {"biology", "average"}
  assert "b2 0 bio_enzyme 1" not in open(out / "qrels" / "biology.qrels").read()  # gold_ids_long
  assert os.path.isfile(out / "biology_bm25_long_True" / "score.json")


def test_max_length_default_and_truncation_count(caplog):
  assert bright.build_parser().parse_args(["--out", "x"]).max_length == 32768

  class Tok:  # BOS + the prefix are 2 tokens, then one per word
    def full_ids(self, texts, instruction):
      return [[1, 2] + t.split() for t in texts]

  enc = type("E", (), {"prompt_tokenizer": Tok()})()
  docs = ["a b c", "a b c d e f g h i j k", "x" * 50]  # 5, 13 and 3 tokens
  assert bright.count_truncated(enc, docs, max_length=8) == 1
  assert bright.count_truncated(enc, docs, max_length=100) == 0


def test_remote_data_and_out_on_the_gcs_emulator(bright_dir, tmp_path, monkeypatch, gcs_emulator):
  from reasonir_jax import paths
  bucket = gcs_emulator.bucket()
  gcs_emulator.upload(bright_dir, f"{bucket}/bright")
  bright.main(["--retriever", "bm25", "--data", f"{bucket}/bright", "--out", f"{bucket}/out",
               "--tasks", "biology"])
  local = tmp_path / "out"
  bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(local), "--tasks", "biology"])
  results = json.loads(paths.read_text(f"{bucket}/out/results.json"))
  assert results["biology"]["ndcg@10"] > 0.6
  assert results == json.load(open(local / "results.json"))
  assert paths.isfile(f"{bucket}/out/biology_bm25_long_False/score.json")
  assert metrics.read_trec_run(f"{bucket}/out/biology.run") == metrics.read_trec_run(str(local / "biology.run"))
  # A remote stage output keeps its append-only answer cache on local disk.
  from reasonir_jax.llm import cache as llm_cache
  monkeypatch.setenv("REASONIR_CACHE", str(tmp_path / "cache"))
  entry = llm_cache.open_cache(f"{bucket}/out/rerank", "biology")
  assert entry.path.startswith(str(tmp_path / "cache"))


def test_long_texts_get_smaller_batches():
  calls = []

  class Tok:
    def encode(self, texts, instruction, max_length):  # BOS, then one token per character
      return [(([1] + [0] * len(t))[:max_length], 1) for t in texts]

  class Enc:
    prompt_tokenizer = Tok()

    def encode(self, texts, instruction=None, batch_size=32, max_length=2048, show_progress=False):
      calls.append((batch_size, len(texts)))
      return np.array([[len(t), 1.0] for t in texts], np.float32)

  texts = ["a" * 100, "b" * 3000, "c" * 9000, "d" * 50, "e" * 40000]
  emb = bright.encode_by_length(Enc(), texts, instruction=None, batch_size=32, max_length=32768)
  assert emb[:, 0].tolist() == [100, 3000, 9000, 50, 40000]  # the caller's order
  # <= 2048 tokens: 32; 3001 -> 16; 9001 -> 4 (three doublings); 40000 is cut to 32768 -> 2.
  assert sorted(calls, reverse=True) == [(32, 2), (16, 1), (4, 1), (2, 1)]
  calls.clear()
  bright.encode_by_length(Enc(), texts, instruction=None, batch_size=32, max_length=2048)
  assert calls == [(32, 5)]


def _recipe(cfg):
  return dict(template=cfg.template, causal=cfg.causal, pooling=cfg.pooling)


def test_cache_entries_are_per_recipe(bright_dir, tiny_eos_model_dir, tmp_path, monkeypatch):
  # One model key, two recipes (Encoder.from_pretrained(recipe=...) reads the same files): the
  # corpus embeddings made under one recipe must never be served under the other.
  from reasonir_jax.encoder import Encoder
  from reasonir_jax.model.config import RECIPES
  corpus_calls = []
  original = Encoder.encode

  def spy(self, texts, instruction=None, **kw):
    if instruction is None:
      corpus_calls.append(self.model_cfg.pooling)
    return original(self, texts, instruction=instruction, **kw)

  monkeypatch.setattr(Encoder, "encode", spy)
  ids, docs = bright_data.load_documents(bright_dir, "biology")
  encoders = {r: Encoder.from_pretrained(tiny_eos_model_dir, dtype="float32", show_progress=False,
                                         recipe=r) for r in RECIPES}

  def corpus(recipe):
    return bright.corpus_embeddings(encoders[recipe], "model-key", "biology", ids, docs,
                                    max_length=64, batch_size=4, long_documents=False,
                                    cache_dir=str(tmp_path)).to_array()

  mean, last = corpus("reasonir"), corpus("qwen3_embedding")
  assert corpus_calls == ["mean", "last_token"]
  assert not np.allclose(mean, last, atol=1e-3)
  # A second run of either recipe reads its own entry.
  np.testing.assert_array_equal(corpus("reasonir"), mean)
  np.testing.assert_array_equal(corpus("qwen3_embedding"), last)
  assert corpus_calls == ["mean", "last_token"]
  assert len(os.listdir(tmp_path)) == 2
  np.testing.assert_allclose(last, encoders["qwen3_embedding"].encode(docs, max_length=64),
                             atol=1e-6)
  # ReasonIR's recipe keeps the key entries had before the recipe was in it.
  assert cache.encoder_key(encoders["reasonir"]) == {"dtype": "float32"}
  assert cache.encoder_key(encoders["qwen3_embedding"])["recipe"] == RECIPES["qwen3_embedding"]


def test_dense_follows_the_recipe_of_an_export(bright_dir, tiny_eos_model_dir, tmp_path,
                                               monkeypatch):
  # An export of the causal, last-token recipe is evaluated in that recipe, read from its files
  # (no flag): the run's scores are the cosines of that recipe's embeddings.
  from reasonir_jax.encoder import Encoder
  from reasonir_jax.model.config import RECIPES
  enc = Encoder.from_pretrained(tiny_eos_model_dir, dtype="float32", show_progress=False,
                                recipe="qwen3_embedding")
  export = enc.save_pretrained(str(tmp_path / "export"))
  seen = []
  original = Encoder.encode

  def spy(self, texts, instruction=None, **kw):
    seen.append(_recipe(self.model_cfg))
    return original(self, texts, instruction=instruction, **kw)

  monkeypatch.setattr(Encoder, "encode", spy)
  out = str(tmp_path / "out")
  bright.main(["--model", export, "--data", bright_dir, "--tasks", "biology", "--dtype", "float32",
               "--max-length", "64", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache"),
               "--out", out])
  assert seen and all(r == RECIPES["qwen3_embedding"] for r in seen)

  examples = bright_data.load_examples(bright_dir, "biology")
  ids, docs = bright_data.load_documents(bright_dir, "biology")
  instruction = bright_data.query_instruction("biology", False)
  run = metrics.read_trec_run(os.path.join(out, "biology.run"))

  def scores(encoder):
    q = encoder.encode([e.query for e in examples], instruction=instruction, max_length=64)
    d = encoder.encode(docs, max_length=64)
    return {e.id: {doc: float(q[i] @ d[ids.index(doc)]) for doc in run[e.id]}
            for i, e in enumerate(examples)}

  want = scores(enc)
  for qid, docs_scores in run.items():
    assert docs_scores == pytest.approx(want[qid], abs=1e-6), qid
  mean = scores(Encoder.from_pretrained(export, dtype="float32", show_progress=False,
                                        recipe="reasonir"))
  assert max(abs(mean[q][d] - want[q][d]) for q in want for d in want[q]) > 1e-3
