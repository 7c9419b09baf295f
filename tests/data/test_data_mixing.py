"""Source mixing: the reference's epoch plan (GritLM's sampler, the default) and weighted draws;
the plan's properties, its input pipeline batches, exact resume, and the errors."""
import glob
import json

import numpy as np
import pytest

from reasonir_jax.configs import load_config
from reasonir_jax.data import mixing, pipeline, sources
from reasonir_jax.data.sample import sample_tokenizer_dir
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.writer import write_rows
from reasonir_jax.tokenization import PromptTokenizer


def _epoch(counts, b, seed=0, epoch=0, process_index=0):
  plan = mixing.EpochPlan(np.asarray(counts), b, process_index, seed, epoch)
  return plan, [plan.rows(j) for j in range(len(plan))]


def test_reference_plan_one_process():
  counts, b = [[30, 13, 6]], 4  # floor(n / 4) = 7, 3, 1; remainders 2 + 1 + 2 = 5: one mixed
  plan, batches = _epoch(counts, b)
  assert len(plan) == 12 and all(len(rows) == b for rows in batches)
  flat = [r for rows in batches for r in rows]
  assert len(set(flat)) == len(flat) == 48  # no record twice; one remainder record left out
  assert all(0 <= k < counts[0][s] for s, k in flat)
  kinds = [{s for s, _ in rows} for rows in batches]
  single = [k.pop() for k in kinds if len(k) == 1]
  assert [single.count(s) for s in range(3)] == [7, 3, 1]
  mixed = [rows for rows in batches if len({s for s, _ in rows}) > 1]
  assert len(mixed) == 1 and all(k >= 4 * [7, 3, 1][s] for s, k in mixed[0])  # the remainders
  # Single-source batches take the source's epoch order in consecutive blocks of b.
  for s, n in enumerate([7, 3, 1]):
    got = sorted(k for rows in batches if {x for x, _ in rows} == {s} for _, k in rows)
    assert got == list(range(4 * n))


def test_reference_plan_proportions_determinism_and_epochs():
  counts, b = [[1000, 300, 50]], 8
  single, mixed = mixing.reference_layout(np.asarray(counts), b)
  assert single.tolist() == [125, 37, 6] and mixed == 0  # remainders 0 + 4 + 2 < 8
  plan, _ = _epoch(counts, b)
  # Sources in proportion to their size, spread over the epoch (not one source after another).
  for s, share in enumerate(np.asarray(counts[0]) // b / 168):
    assert abs(np.mean(plan.kinds == s) - share) < 1e-9
    assert abs(np.mean(plan.kinds[:84] == s) - share) < 0.12
  again, _ = _epoch(counts, b)
  assert np.array_equal(plan.kinds, again.kinds)
  assert not np.array_equal(plan.kinds, _epoch(counts, b, epoch=1)[0].kinds)
  assert not np.array_equal(plan.kinds, _epoch(counts, b, seed=1)[0].kinds)


def test_reference_plan_is_the_same_on_every_process():
  # Uneven files: process 0 has more alpha, process 1 more beta. Global batch 8 = 2 x 4.
  counts, b = np.asarray([[12, 7], [10, 9]]), 4
  single, mixed = mixing.reference_layout(counts, b)
  assert single.tolist() == [2, 1] and mixed == 1  # pools: 4 + 3 and 2 + 5 -> one batch of 4 each
  plans = [_epoch(counts, b, process_index=p) for p in (0, 1)]
  assert np.array_equal(plans[0][0].kinds, plans[1][0].kinds)
  for p, (_, batches) in enumerate(plans):
    flat = [r for rows in batches for r in rows]
    assert len(set(flat)) == len(flat) == 16 and all(k < counts[p][s] for s, k in flat)


def test_bad_mixing_value_names_the_key():
  with pytest.raises(ValueError, match=r"config.data.mixing='gritlm'.*'reference', 'weighted'"):
    mixing.check_mode("gritlm")


def test_reference_mixing_is_the_default():
  for name in ("base", "tiny", "llama3_8b"):
    assert load_config(name).data.mixing == "reference", name


# -- through the input pipeline ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
  return PromptTokenizer(sample_tokenizer_dir())


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
  d = tmp_path_factory.mktemp("mix")
  for name, n, shards in (("alpha", 30, 3), ("beta", 13, 2), ("gamma", 6, 2)):
    write_rows([TrainingRow(row_id=f"{name}{i}", source=name, query=f"{name} query {i}",
                            positives=[f"{name} positive {i}"], negatives=[f"{name} negative {i}"])
                for i in range(n)], str(d), name, shards)
  return ",".join(f"{n}={d}/{n}-*.tfrecord" for n in ("alpha", "beta", "gamma"))


def _config(spec, batch, **data):
  c = load_config("tiny")
  c.data.sources = spec
  c.train.global_batch_size = batch
  c.data.prefetch = 0
  c.data.update(data)
  return c


def _queries(tok, batch):
  q = batch["query"]
  return [tok.tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])
          for ids, mask in zip(q["input_ids"], q["pool_mask"])]


def test_pipeline_epoch_reads_each_record_once(three_sources, tok):
  it = pipeline.make_host_iterator(_config(three_sources, 4), tok, process_index=0,
                                   process_count=1)
  epochs = []
  for _ in range(2):
    batches = [_queries(tok, next(it)) for _ in range(12)]  # 7 + 3 + 1 single, 1 mixed
    flat = [q for b in batches for q in b]
    assert len(set(flat)) == 48
    sources_of = [{q.split()[0] for q in b} for b in batches]
    single = [s.pop() for s in sources_of if len(s) == 1]
    assert sorted(single) == ["alpha"] * 7 + ["beta"] * 3 + ["gamma"]
    epochs.append(batches)
  assert epochs[0] != epochs[1]  # a new permutation each epoch
  state = it.get_state()
  assert (state["mixing"], state["epoch"], state["epoch_batch"]) == ("reference", 2, 0)
  assert state["records"] == {"alpha": [30], "beta": [13], "gamma": [6]}


@pytest.mark.parametrize("prefetch,workers", [(1, 0), (2, 2)])
def test_pipeline_resume_mid_epoch_and_across_epochs(three_sources, tok, prefetch, workers):
  c = _config(three_sources, 4)
  straight = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1,
                                         prefetch=prefetch, num_workers=workers)
  want = [_queries(tok, next(straight)) for _ in range(20)]
  for stop in (5, 11, 12):  # mid-epoch; before the first epoch's last batch; after it (12)
    first = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1,
                                        prefetch=prefetch, num_workers=workers)
    for _ in range(stop):
      next(first)
    state = json.loads(json.dumps(first.get_state()))
    assert (state["epoch"], state["epoch_batch"]) == divmod(stop, 12)
    resumed = pipeline.make_host_iterator(c, tok, process_index=0, process_count=1,
                                          prefetch=prefetch, num_workers=workers)
    resumed.set_state(state)
    assert [_queries(tok, next(resumed)) for _ in range(20 - stop)] == want[stop:]
    assert resumed.stats() == straight.stats()
    first.close(), resumed.close()
  straight.close()


def test_pipeline_processes_share_the_plan(three_sources, tok, monkeypatch):
  c = _config(three_sources, 4)  # 2 processes x 2 rows
  its = [pipeline.make_host_iterator(c, tok, process_index=p, process_count=2) for p in (0, 1)]
  # Equal record shares whatever the files: alpha's 30 records 15/15, beta's 13 6/6 (its last
  # record left out), gamma's 6 3/3.
  want = {"alpha": [15, 15], "beta": [6, 6], "gamma": [3, 3]}
  assert its[0].get_state()["records"] == its[1].get_state()["records"] == want
  seen, kinds = [[], []], []
  for _ in range(12):  # 7 + 3 + 1 single-source batches, 1 mixed (each process's pool is 2)
    parts = [_queries(tok, next(it)) for it in its]
    kinds.append(len({q.split()[0] for q in parts[0] + parts[1]}))
    for p in (0, 1):
      seen[p] += parts[p]
  assert sorted(kinds) == [1] * 11 + [2]
  assert all(len(set(s)) == 24 for s in seen) and not set(seen[0]) & set(seen[1])
  # In a real multi-process run each process indexes its block of files, and one all-gather
  # gives every process every file's record count.
  import jax
  from jax.experimental import multihost_utils
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: np.stack([x, np.asarray([0, 7, 9], np.int32)]))
  files = sorted(glob.glob(three_sources.split(",")[0].split("=")[1]))
  indexer = sources.FileIndexer()
  counts = sources.file_record_counts(files, indexer, 0, 2)
  assert counts.tolist() == [10, 7, 9] and indexer.indexed == files[:1]


def test_mixing_errors_name_the_keys(three_sources, tok, tmp_path):
  weighted = three_sources.replace("-*.tfrecord,", "-*.tfrecord:2,", 1)
  with pytest.raises(ValueError, match=r"weights \(alpha:2\).*config.data.mixing=weighted"):
    pipeline.make_host_iterator(_config(weighted, 4), tok, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="config.data.mixing='sizes'"):
    pipeline.make_host_iterator(_config(three_sources, 4, mixing="sizes"), tok, process_index=0,
                                process_count=1)
  with pytest.raises(ValueError, match="single_source_batches=False needs config.data.mixing"):
    pipeline.make_host_iterator(_config(three_sources, 4, single_source_batches=False), tok,
                                process_index=0, process_count=1)
  with pytest.raises(ValueError, match="49 records.*not one global batch.*64"):
    pipeline.make_host_iterator(_config(three_sources, 64), tok, process_index=0, process_count=1)
  # A state of the other mode, or of other data, says what differs.
  ref = pipeline.make_host_iterator(_config(three_sources, 4), tok, process_index=0,
                                    process_count=1)
  wtd = pipeline.make_host_iterator(_config(weighted, 4, mixing="weighted"), tok,
                                    process_index=0, process_count=1)
  with pytest.raises(ValueError, match="--config.data.mixing=weighted"):
    ref.set_state(wtd.get_state())
  with pytest.raises(ValueError, match="--config.data.mixing=reference"):
    wtd.set_state(ref.get_state())
  old = {**wtd.get_state(), "version": 1}  # written before the mixing key: weighted draws
  old.pop("mixing")
  wtd.set_state(old)
  state = ref.get_state()
  state["records"]["beta"] = [14]
  with pytest.raises(ValueError, match=r"source 'beta' has \[13\] records.*data changed"):
    ref.set_state(state)


def test_dropped_row_is_replaced_by_a_record_the_batch_lacks(tmp_path, tok):
  ok = [TrainingRow(row_id=f"ok{i}", source="d", query=f"ok query {i}", positives=[f"p{i}"],
                    negatives=[f"n{i}"]) for i in range(6)]
  long = [TrainingRow(row_id=f"long{i}", source="d", query=f"long query {i}", positives=["p"],
                      negatives=["n"], query_instruction="very long instruction " * 60)
          for i in range(3)]
  write_rows(ok + long, str(tmp_path), "d", 1)
  it = pipeline.make_host_iterator(_config(f"d={tmp_path}/d-*", 6), tok, process_index=0,
                                   process_count=1)
  assert sorted(_queries(tok, next(it))) == sorted(r.query for r in ok)  # 6 distinct rows
  assert it.stats()["dropped_long_instruction"] >= 1
