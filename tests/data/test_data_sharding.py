"""Record-level sharding: every process reads a disjoint, equal share of every source's records,
whatever the number of files, so every record is drawn at the same rate on every host."""
import numpy as np
import pytest

from reasonir_jax.config import load_config
from reasonir_jax.data import mixing, pipeline, sources
from reasonir_jax.data.sample import sample_tokenizer_dir
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.writer import write_rows
from reasonir_jax.tokenization import PromptTokenizer


def _query_ids(batch):
  """Each query row's text tokens (a query is unique per record here)."""
  q = batch["query"]
  return [tuple(int(t) for t, m in zip(ids, mask) if m)
          for ids, mask in zip(q["input_ids"], q["pool_mask"])]


@pytest.mark.parametrize("mixing_mode", ["reference", "weighted"])
def test_one_file_on_eight_processes_disjoint_shares_cover_every_record(tmp_path, mixing_mode):
  rows = [TrainingRow(row_id=f"r{i}", source="one", query=f"one query {i}",
                      positives=[f"one positive {i}"], negatives=[f"one negative {i}"])
          for i in range(40)]
  write_rows(rows, str(tmp_path), "one", 1)
  tok = PromptTokenizer(sample_tokenizer_dir())
  c = load_config("tiny", [f"data.sources=one={tmp_path}/one-*.tfrecord", "data.prefetch=0",
                           f"data.mixing={mixing_mode}", "train.global_batch_size=16"])  # 8 x 2
  seen = []
  for p in range(8):
    it = pipeline.make_host_iterator(c, tok, process_index=p, process_count=8)
    assert it.shares[0].share == range(5 * p, 5 * p + 5)
    # Every record of the share once: read through the share's Grain dataset...
    share = {it.shares[0].records[k][2] for k in range(5)}
    assert len(share) == 5
    # ... and through the batches, over several epochs of this process (5 records, 2 a batch).
    seen.append({q for _ in range(5) for q in _query_ids(next(it))})
    it.close()
  assert all(not seen[a] & seen[b] for a in range(8) for b in range(a))
  want = {tuple(ids[prefix:]) for ids, prefix in tok.encode([r.query for r in rows], [None] * 40,
                                                              c.data.query_max_length)}
  assert set().union(*seen) <= want
  if mixing_mode == "weighted":  # one source read as a stream: every record of the share
    assert set().union(*seen) == want
  else:  # the reference plan leaves one record of each 5-record share out per epoch
    assert all(len(s) >= 4 for s in seen)


def test_96_files_on_64_processes_draw_every_record_at_the_same_rate():
  rng = np.random.default_rng(0)
  file_counts = rng.integers(900, 1100, size=96).tolist()  # uneven files, as written
  total, procs, local_batch = sum(file_counts), 64, 4
  shares = [sources.record_share(total, p, procs, "hq") for p in range(procs)]
  # Disjoint, equal, and covering all but fewer than `procs` records.
  covered = np.zeros(total, np.int64)
  for share in shares:
    covered[share.start:share.stop] += 1
  assert covered.max() == 1 and total - covered.sum() < procs
  assert len({len(s) for s in shares}) == 1
  # Each share lies in the files `file_pieces` names; the pieces add up to the share.
  starts = np.concatenate([[0], np.cumsum(file_counts)])
  for share in shares:
    pieces = sources.file_pieces(file_counts, share)
    assert sum(hi - lo for _, lo, hi in pieces) == len(share)
    assert starts[pieces[0][0]] + pieces[0][1] == share.start
  # Draws per record and epoch under the reference plan: the same on every host.
  counts = np.asarray([[len(s)] for s in shares])
  single, mixed = mixing.reference_layout(counts, local_batch)
  draws_per_host = (int(single.sum()) + mixed) * local_batch
  rates = draws_per_host / counts[:, 0]
  assert np.all(rates == rates[0]) and 0.99 < rates[0] <= 1
  # Weighted single-source draws: every host takes local_batch rows of the source per batch
  # from a share of the same size, so the same rate too.
  assert len(set((local_batch / counts[:, 0]).tolist())) == 1
  # What the old per-file split did here: half the hosts held two files, half one.
  by_file = [sum(file_counts[p::procs]) for p in range(procs)]
  assert max(by_file) > 1.5 * min(by_file)


def test_a_process_stages_its_index_block_and_the_files_of_its_share():
  file_counts, procs = [100] * 32, 16
  for p in range(procs):
    share = sources.record_share(sum(file_counts), p, procs, "s")
    touched = set(sources.index_block(32, p, procs))
    touched |= {i for i, _, _ in sources.file_pieces(file_counts, share)}
    assert touched == {2 * p, 2 * p + 1}  # files of similar size: no file beyond its block
  # One file on 16 processes: only the process whose block holds it indexes it for the count.
  assert [len(sources.index_block(1, p, 16)) for p in range(16)] == [0] * 15 + [1]


def test_a_source_with_fewer_records_than_processes_names_the_fix():
  with pytest.raises(ValueError, match="source 'hq' has 12 records but there are 16 processes"):
    sources.record_share(12, 0, 16, "hq")


def test_offset_index_is_built_once_and_rebuilt_when_the_file_changes(tmp_path, monkeypatch):
  rows = [TrainingRow(row_id=f"r{i}", source="one", query=f"q {i}", positives=[f"p {i}"],
                      negatives=[f"n {i}"]) for i in range(6)]
  write_rows(rows, str(tmp_path / "data"), "one", 1)
  path = str(next((tmp_path / "data").glob("one-*.tfrecord")))
  stage = str(tmp_path / "stage")
  scans = []
  real = sources.build_offset_index
  monkeypatch.setattr(sources, "build_offset_index",
                      lambda p, **kw: scans.append(p) or real(p, **kw))
  first = sources.FileIndexer(stage_dir=stage)(path)[1]
  again = sources.FileIndexer(stage_dir=stage)(path)[1]  # a restarted process
  assert len(scans) == 1 and len(first.offsets) == 6
  assert (again.offsets, again.lengths) == (first.offsets, first.lengths)
  write_rows(rows[:4], str(tmp_path / "data"), "one", 1)  # the same name, other records
  changed = sources.FileIndexer(stage_dir=stage)(path)[1]
  assert len(scans) == 2 and len(changed.offsets) == 4
