"""The input pipeline: batch layout, determinism, exact restore, per-process sharding, source
mixing, negative sampling, instruction-prefix counts, dropping, corrupt records, global arrays."""
import json

import numpy as np
import pytest

from reasonir_jax.configs import load_config
from reasonir_jax.data import pipeline
from reasonir_jax.data.sample import sample_tokenizer_dir
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.tfrecord import CorruptRecordError, build_offset_index
from reasonir_jax.data.writer import write_rows
from reasonir_jax.tokenization import BOS_TOKEN, PromptTokenizer, prompt_prefix


@pytest.fixture(scope="module")
def tok():
  return PromptTokenizer(sample_tokenizer_dir())


def _rows(prefix, n, negs=lambda i: 1 + i % 3, inst="Given a biology post, retrieve relevant passages"):
  return [TrainingRow(row_id=f"{prefix}{i}", source=prefix, query=f"{prefix} query number {i} about cells",
                      positives=[f"{prefix} positive {i}: water moves by osmosis"],
                      negatives=[f"{prefix} negative {i}.{j} on brine recipes" for j in range(negs(i))],
                      query_instruction=inst) for i in range(n)]


def _config(sources, batch=8, group=2, **data):
  c = load_config("tiny")
  c.data.sources = sources
  c.train.global_batch_size = batch
  c.data.group_size = group
  c.data.prefetch = 0
  c.data.update(data)
  return c


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
  d = tmp_path_factory.mktemp("src")
  write_rows(_rows("alpha", 24), str(d), "alpha", 4)
  write_rows(_rows("beta", 16), str(d), "beta", 4)
  return {"alpha": str(d / "alpha-*.tfrecord"), "beta": str(d / "beta-*.tfrecord")}


def _text(tok, ids, mask):
  return tok.tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])


def _batches(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(a[p][k], b[p][k]) for p in a for k in a[p])


def test_batch_layout_positive_first_and_prefix_counts(two_sources, tok):
  c = _config(f"alpha={two_sources['alpha']}", batch=8, group=4)
  it = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1)
  rows = {r.query: r for r in _rows("alpha", 24)}
  b = next(it)
  q, p = b["query"], b["passage"]
  assert q["input_ids"].shape[0] == 8 and p["input_ids"].shape[0] == 32
  assert q["input_ids"].dtype == np.int32 and p["pool_mask"].dtype == np.int32
  assert q["input_ids"].shape[1] in c.data.bucket_lengths and p["input_ids"].shape[1] in c.data.bucket_lengths
  q_prefix = len(tok.tokenizer(prompt_prefix(rows["alpha query number 0 about cells"].query_instruction),
                               add_special_tokens=False)["input_ids"]) + 1
  doc_prefix = len(tok.tokenizer(prompt_prefix(None), add_special_tokens=False)["input_ids"]) + 1
  for i in range(8):
    row = rows[_text(tok, q["input_ids"][i], q["pool_mask"][i])]
    # The masked-out (prefix) tokens are exactly BOS + the template prefix.
    assert q["attention_mask"][i].sum() - q["pool_mask"][i].sum() == q_prefix
    assert q["input_ids"][i, 0] == tok.bos_id and q["pool_mask"][i, q_prefix] == 1
    texts = [_text(tok, p["input_ids"][i * 4 + g], p["pool_mask"][i * 4 + g]) for g in range(4)]
    assert texts[0] == row.positives[0]
    assert all(t in row.negatives for t in texts[1:])  # sampled with repetition when too few
    for g in range(4):
      assert p["attention_mask"][i * 4 + g].sum() - p["pool_mask"][i * 4 + g].sum() == doc_prefix
    # Padding is on the right and masked.
    n = q["attention_mask"][i].sum()
    assert q["attention_mask"][i, :n].all() and not q["attention_mask"][i, n:].any()
    assert (q["input_ids"][i, n:] == tok.pad_id).all()


@pytest.mark.parametrize("fixture", ["sample", "conftest"])
def test_fast_encoding_equals_plain_tokenizer_call(fixture, tok, tokenizer_dir):
  t = tok if fixture == "sample" else PromptTokenizer(tokenizer_dir)
  texts = ["Ελληνικά 東京 café 🙂 ∑∫√ <|embed|> x", "", "long " * 400, "a\n\nb  c\td", "<|begin_of_text|>hi"]
  insts = ["Given a biology post, retrieve relevant passages", None, "", "x " * 200, "inst"]
  assert not t.adds_bos  # these tokenizers add nothing: BOS is put in front
  for max_length in (8, 64, 512):
    # BOS + prefix + text (cut to 10 x max_length characters) as one string, by the slow,
    # offset-tracking call; the prefix count is BOS + the prefix alone.
    joined = [prompt_prefix(i) + x[: 10 * max_length] for x, i in zip(texts, insts)]
    plain = t.tokenizer([BOS_TOKEN + x for x in joined], add_special_tokens=False)["input_ids"]
    prefixes = t.tokenizer([BOS_TOKEN + prompt_prefix(i) for i in insts],
                           add_special_tokens=False)["input_ids"]
    expected = [None if len(p) >= max_length else (ids[:max_length], len(p))
                for ids, p in zip(plain, prefixes)]
    assert t.encode(texts, insts, max_length) == expected


@pytest.mark.parametrize("mixing", ["reference", "weighted"])
def test_same_seed_same_batches_and_exact_restore(two_sources, tok, mixing):
  weights = (":3", ":1") if mixing == "weighted" else ("", "")
  spec = f"alpha={two_sources['alpha']}{weights[0]},beta={two_sources['beta']}{weights[1]}"
  c = _config(spec, batch=8, mixing=mixing)
  a = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1, prefetch=2)
  first = _batches(a, 3)
  state = json.loads(json.dumps(a.get_state()))  # JSON-serialisable
  # Crosses an epoch boundary (alpha 24 rows, beta 16 rows; reference: 5 batches an epoch).
  rest = _batches(a, 6)
  # Same batches with tokenizer worker threads.
  b = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1, prefetch=2, num_workers=2)
  assert all(_same(x, y) for x, y in zip(first, _batches(b, 3)))
  b.set_state(state)
  assert all(_same(x, y) for x, y in zip(rest, _batches(b, 6)))
  assert b.stats() == a.stats()
  other = pipeline.make_host_iterator(_config(f"alpha={two_sources['alpha']}", batch=8,
                                              mixing=mixing), tok, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="sources"):
    other.set_state(state)
  c2 = _config(spec, batch=8, shuffle_seed=1, mixing=mixing)
  d = pipeline.make_host_iterator(c2, tok, process_index=0, process_count=1)
  assert not all(_same(x, y) for x, y in zip(first, _batches(d, 3)))
  a.close(), b.close()


def test_weighted_mixing_single_source_batches_and_weights(two_sources, tok):
  spec = f"alpha={two_sources['alpha']}:3,beta={two_sources['beta']}:1"
  it = pipeline.make_host_iterator(_config(spec, batch=4, mixing="weighted"), tok,
                                   process_index=0, process_count=1)
  kinds = []
  for _ in range(40):
    b = next(it)
    names = {_text(tok, ids, m).split()[0] for ids, m in zip(b["query"]["input_ids"], b["query"]["pool_mask"])}
    assert len(names) == 1  # one source per batch
    kinds.append(names.pop())
  assert 20 <= kinds.count("alpha") <= 38 and kinds.count("beta") >= 2
  assert it.stats()["rows_per_source"] == {"alpha": 4 * kinds.count("alpha"), "beta": 4 * kinds.count("beta")}
  mixed = pipeline.make_host_iterator(_config(spec, batch=8, mixing="weighted",
                                              single_source_batches=False), tok,
                                      process_index=0, process_count=1)
  seen = set()
  for b in _batches(mixed, 5):
    seen.add(len({_text(tok, ids, m).split()[0] for ids, m in zip(b["query"]["input_ids"], b["query"]["pool_mask"])}))
  assert 2 in seen


def test_processes_read_disjoint_rows_that_cover_the_data(two_sources, tok):
  c = _config(f"alpha={two_sources['alpha']}", batch=8)
  seen = []
  for pi in (0, 1):
    it = pipeline.make_host_iterator(c, tok, process_index=pi, process_count=2)  # local batch 4
    queries = set()
    for b in _batches(it, 3):  # 12 local rows = one epoch of this process
      queries |= {_text(tok, ids, m) for ids, m in zip(b["query"]["input_ids"], b["query"]["pool_mask"])}
    assert len(queries) == 12
    seen.append(queries)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {r.query for r in _rows("alpha", 24)}
  # Shares are of records, not files: 4 files on 8 processes work, fewer records than
  # processes do not.
  it = pipeline.make_host_iterator(c, tok, process_index=7, process_count=8)
  assert len(it.shares[0]) == 3 and it.shares[0].share == range(21, 24)
  with pytest.raises(ValueError, match="'alpha' has 24 records but there are 32 processes"):
    pipeline.make_host_iterator(_config(f"alpha={two_sources['alpha']}", batch=32), tok,
                                process_index=0, process_count=32)


def test_negatives_with_repetition_and_in_batch_fallback(tmp_path, tok):
  rows = _rows("g", 8, negs=lambda i: 0 if i % 2 else 1)
  write_rows(rows, str(tmp_path), "g", 1)
  it = pipeline.make_host_iterator(_config(f"g={tmp_path}/g-*", batch=8, group=3), tok,
                                   process_index=0, process_count=1)
  b = next(it)
  by_query = {r.query: r for r in rows}
  positives = {r.positives[0] for r in rows}
  for i in range(8):
    row = by_query[_text(tok, b["query"]["input_ids"][i], b["query"]["pool_mask"][i])]
    negs = [_text(tok, b["passage"]["input_ids"][i * 3 + g], b["passage"]["pool_mask"][i * 3 + g]) for g in (1, 2)]
    if row.negatives:
      assert negs == row.negatives * 2
    else:
      assert all(n in positives and n != row.positives[0] for n in negs)
  assert it.stats()["rows_without_negatives"] == 4


def test_long_instruction_rows_are_dropped_and_counted(tmp_path, tok):
  rows = _rows("ok", 6) + _rows("long", 3, inst="very long instruction " * 60)
  write_rows(rows, str(tmp_path), "d", 1)
  # Weighted mixing reads each source as one stream: every record once, in order.
  it = pipeline.make_host_iterator(_config(f"d={tmp_path}/d-*", batch=6, mixing="weighted"), tok,
                                   process_index=0, process_count=1)
  b = next(it)
  assert {_text(tok, i, m).split()[0] for i, m in zip(b["query"]["input_ids"], b["query"]["pool_mask"])} == {"ok"}
  stats = it.stats()
  assert stats["dropped_long_instruction"] == 3 and stats["rows_read"] == 9
  # A source with no usable row at all is an error, not an endless loop.
  write_rows(_rows("long", 3, inst="very long instruction " * 60), str(tmp_path), "all_long", 1)
  it = pipeline.make_host_iterator(_config(f"x={tmp_path}/all_long-*", batch=2), tok,
                                   process_index=0, process_count=1)
  with pytest.raises(ValueError, match="source 'x': no usable row"):
    next(it)


def test_corrupt_record_stops_or_is_skipped_and_counted(tmp_path, tok):
  write_rows(_rows("c", 8), str(tmp_path), "c", 1)
  path = str(tmp_path / "c-00000-of-00001.tfrecord")
  off = build_offset_index(path).offsets[5]
  with open(path, "r+b") as f:
    f.seek(off + 20)
    f.write(b"\xde\xad")
  it = pipeline.make_host_iterator(_config(f"c={path}", batch=8), tok, process_index=0, process_count=1)
  with pytest.raises(CorruptRecordError, match=f"c-00000-of-00001.tfrecord at byte offset {off}"):
    next(it)
  # 7 good records: one batch of 7 reads exactly one epoch; each skip is counted and logged.
  it = pipeline.make_host_iterator(_config(f"c={path}", batch=7, skip_corrupt=True), tok,
                                   process_index=0, process_count=1)
  next(it)
  assert it.stats()["skipped_corrupt"] == 1 and it.stats()["rows_read"] == 7


def test_bad_sources_spec_is_a_clear_error(tok):
  with pytest.raises(ValueError, match="name=glob"):
    pipeline.make_host_iterator(_config("nonsense"), tok, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match="no files match"):
    pipeline.make_host_iterator(_config("x=/nonexistent/dir/*.tfrecord"), tok, process_index=0, process_count=1)


def test_global_arrays_in_requested_sharding(two_sources, tok):
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  c = _config(f"alpha={two_sources['alpha']}", batch=8, group=2)
  host = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1)
  expected = _batches(host, 2)
  for shape in ((8, 1, 1), (2, 4, 1)):
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"))
    spec = P(("data", "fsdp"))
    it = pipeline.make_train_iterator(c, tok, mesh, spec, process_index=0, process_count=1)
    for want in expected:
      got = next(it)
      for part, rows in (("query", 8), ("passage", 16)):
        for k, arr in got[part].items():
          assert isinstance(arr, jax.Array) and arr.sharding == NamedSharding(mesh, spec)
          assert {s.data.shape[0] for s in arr.addressable_shards} == {rows // 8}  # split, not replicated
          np.testing.assert_array_equal(np.asarray(arr), want[part][k])
    state = it.get_state()
    assert state["batch_index"] == 2
    following = next(it)
    again = pipeline.make_train_iterator(c, tok, mesh, spec, process_index=0, process_count=1)
    again.set_state(json.dumps(state).encode())  # the JSON bytes form works too
    assert all(np.array_equal(np.asarray(following[p][k]), np.asarray(v))
               for p, arrays in next(again).items() for k, v in arrays.items())
    it.close(), again.close()


def test_multi_process_lengths_agree(monkeypatch, two_sources, tok):
  """Every process pads a global batch to the longest bucket over processes."""
  import jax
  from jax.experimental import multihost_utils
  from jax.sharding import PartitionSpec as P
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: np.stack([x, np.asarray([128, 64], np.int32)]))
  c = _config(f"alpha={two_sources['alpha']}", batch=8)
  host = pipeline.make_host_iterator(c, tok, process_index=0, process_count=2)
  mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
  it = pipeline.TrainIterator(host, mesh, P(("data", "fsdp")), process_count=2, device_prefetch=0)
  b = it._agree_lengths(next(host))
  assert b["query"]["input_ids"].shape == (4, 128)
  assert b["passage"]["input_ids"].shape[1] >= 64
  assert (b["query"]["input_ids"][:, -1] == tok.pad_id).all() and not b["query"]["attention_mask"][:, -1].any()


def test_sample_source_runs(tok):
  c = load_config("tiny")
  c.data.prefetch = 1
  it = pipeline.make_host_iterator(c, None, process_index=0, process_count=1)
  b = next(it)
  assert b["query"]["input_ids"].shape[0] == c.train.global_batch_size
  assert b["passage"]["input_ids"].shape[0] == c.train.global_batch_size * c.data.group_size
  it.close()
