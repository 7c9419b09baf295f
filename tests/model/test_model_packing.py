"""Packed rows: the packer, and a packed encode equal to each text encoded alone (HF PyTorch)."""
import numpy as np
import pytest

from reasonir_jax.packing import cut_lengths, fit_to_rows, pack_lengths, packed_arrays


def _first_fit_decreasing(lengths, row_length):
  rows, free = [], []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    j = next((j for j, f in enumerate(free) if f >= lengths[i]), None)
    if j is None:
      rows.append([])
      free.append(row_length)
      j = len(rows) - 1
    rows[j].append(i)
    free[j] -= lengths[i]
  return rows


def test_best_fit_decreasing_fills_rows_and_keeps_every_text():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 60, size=300).tolist()
  rows = pack_lengths(lengths, 64)
  assert sorted(i for r in rows for i in r) == list(range(300))
  assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
  # No more rows than plain first-fit decreasing, and within 2% of the volume bound on a mix of
  # short texts.
  assert len(rows) <= len(_first_fit_decreasing(lengths, 64))
  short = rng.integers(1, 24, size=1000).tolist()
  assert len(pack_lengths(short, 64)) <= 1.02 * sum(short) / 64 + 1
  assert pack_lengths([40, 40, 40], 64, num_rows=2) is None
  with pytest.raises(ValueError, match="row length"):
    pack_lengths([65], 64)


def test_fit_to_rows_cuts_the_longest_texts_only_when_needed():
  rows, cap = fit_to_rows([10, 10, 10, 10], 20, 2)
  assert cap is None and sorted(map(len, rows)) == [2, 2]
  lengths = [24, 20, 5, 3]  # 52 tokens for 50 slots: 24 is cut to 22 (22+3, 20+5)
  rows, cap = fit_to_rows(lengths, 25, 2)
  assert cap == 22
  assert sorted(i for r in rows for i in r) == [0, 1, 2, 3]
  assert all(sum(min(lengths[i], cap) for i in r) <= 25 for r in rows)
  assert fit_to_rows(lengths, 25, 3)[1] is None
  assert fit_to_rows([30, 3], 25, 2)[1] == 25  # longer than a row: cut to the row
  with pytest.raises(ValueError, match="cannot fit"):
    fit_to_rows([1] * 7, 3, 2)
  # Never below a text's minimum (its prefix + 1): the others give way.
  rows, cap = fit_to_rows([20, 20], 12, 2, min_lengths=[12, 3])
  assert cut_lengths([20, 20], cap, [12, 3]) == [12, cap] and cap <= 12


def test_packed_arrays_layout():
  encoded = [([0, 5, 6, 7], 2), ([0, 8], 1), ([0, 9, 9], 1)]
  out = packed_arrays(encoded, [[0, 1], [2]], 8, pad_id=2, text_offset=10)
  np.testing.assert_array_equal(out["input_ids"][0], [0, 5, 6, 7, 0, 8, 2, 2])
  np.testing.assert_array_equal(out["segment_ids"][0], [1, 1, 1, 1, 2, 2, 0, 0])
  np.testing.assert_array_equal(out["positions"][0], [0, 1, 2, 3, 0, 1, 0, 0])
  np.testing.assert_array_equal(out["pool_ids"][0], [-1, -1, 10, 10, -1, 11, -1, -1])
  np.testing.assert_array_equal(out["pool_ids"][1], [-1, 12, 12, -1, -1, -1, -1, -1])
  cut = packed_arrays(encoded, [[0, 1], [2]], 8, pad_id=2, lengths=cut_lengths([4, 2, 3], 2))
  np.testing.assert_array_equal(cut["segment_ids"][0], [1, 1, 2, 2, 0, 0, 0, 0])


def _torch_alone(hf, ids, prefix_len):
  """The PyTorch reference on one text by itself: mean over its non-prefix tokens, normalised."""
  import torch
  with torch.no_grad():
    h = hf(input_ids=torch.tensor([ids], dtype=torch.long)).last_hidden_state[0].numpy()
  e = h[prefix_len:].astype(np.float64).mean(0)
  return e / np.linalg.norm(e)


@pytest.mark.parametrize("scan", [True, False])
def test_packed_encode_equals_each_text_alone_in_pytorch(tmp_path, hf_model_factory, scan):
  import jax
  from reasonir_jax.hf import load_hf
  from reasonir_jax.model import embed_packed
  hf = hf_model_factory(seed=3)
  hf.save_pretrained(str(tmp_path))
  model, _ = load_hf(str(tmp_path), show_progress=False, param_dtype="float32", dtype="float32",
                     scan_layers=scan, remat_policy="none")
  rng = np.random.default_rng(4)
  lengths = [17, 3, 9, 12, 5, 30, 7, 2, 11]
  encoded = [([0] + rng.integers(3, 512, n - 1).tolist(), int(rng.integers(1, min(n, 4))))
             for n in lengths]
  rows = pack_lengths(lengths, 32)
  assert len(rows) < len(lengths) and max(len(r) for r in rows) >= 3
  rows += [[]]  # an all-padding row stays finite
  arrays = packed_arrays(encoded, rows, 32, pad_id=2)
  n = len(encoded) + 3  # extra slots stay zero
  emb = np.asarray(jax.jit(embed_packed, static_argnums=5)(
      model, arrays["input_ids"], arrays["segment_ids"], arrays["positions"],
      arrays["pool_ids"], n))
  assert np.all(np.isfinite(emb)) and np.all(emb[len(encoded):] == 0)
  for i, (ids, prefix_len) in enumerate(encoded):
    np.testing.assert_allclose(emb[i], _torch_alone(hf, ids, prefix_len), atol=1e-5, rtol=0,
                               err_msg=f"text {i} ({len(ids)} tokens)")


def test_encoder_packs_by_default_keeps_order_and_compiles_once(hf_dir):
  from reasonir_jax import Encoder
  from reasonir_jax.hf.torch_reference import encode as torch_encode
  import transformers
  enc = Encoder.from_pretrained(hf_dir, dtype="float32", show_progress=False)
  rng = np.random.default_rng(0)
  words = "cell energy proof graph water orbit enzyme market light code".split()
  texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(37)]
  packed = enc.encode(texts, instruction="Find the passage", batch_size=4, max_length=64,
                      packing=True)
  assert enc._embed_packed._cache_size() == 1  # one shape for every call
  padded = enc.encode(texts, instruction="Find the passage", batch_size=4, max_length=64,
                      packing=False)
  np.testing.assert_allclose(packed, padded, atol=1e-5)
  hf = transformers.AutoModel.from_pretrained(hf_dir, dtype="float32")
  from reasonir_jax.hf.torch_reference import make_bidirectional
  hf = make_bidirectional(hf.eval())
  for i in (0, 5, 36):  # each text alone, in the caller's order
    ref = torch_encode(hf, enc.tokenizer, [texts[i]], "Find the passage", max_length=64)
    np.testing.assert_allclose(packed[i], ref.numpy()[0], atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_packed_encode_on_a_mesh_equals_one_device(hf_dir, shape):
  import ml_collections
  from reasonir_jax import Encoder
  from reasonir_jax import sharding as shd
  mesh = shd.make_mesh(ml_collections.ConfigDict({"shape": shape,
                                                  "axes": ("data", "fsdp", "tensor")}))
  rng = np.random.default_rng(1)
  words = "cell energy proof graph water orbit enzyme market light code".split()
  texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(21)]
  plain = Encoder.from_pretrained(hf_dir, dtype="float32", show_progress=False)
  sharded = Encoder.from_pretrained(hf_dir, dtype="float32", mesh=mesh, show_progress=False)
  np.testing.assert_allclose(sharded.encode(texts, batch_size=4, max_length=48, packing=True),
                             plain.encode(texts, batch_size=4, max_length=48, packing=True),
                             atol=1e-5)


def test_encoder_runs_the_padded_path_when_it_costs_less(hf_dir):
  """Near-equal lengths: sorted padded batches waste little, so encode() skips the segment
  mask; the same texts plus a spread of short ones are packed. Both equal packing=False."""
  from reasonir_jax import Encoder, encoder as encoder_lib
  enc = Encoder.from_pretrained(hf_dir, dtype="float32", show_progress=False)
  rng = np.random.default_rng(2)
  words = "cell energy proof graph water orbit enzyme market light code".split()
  equal = [" ".join(rng.choice(words, size=40)) for _ in range(12)]
  out = enc.encode(equal, batch_size=4, max_length=64)
  assert enc._embed_packed._cache_size() == 0 and enc._embed._cache_size() == 1
  np.testing.assert_allclose(out, enc.encode(equal, batch_size=4, max_length=64, packing=False),
                             atol=1e-6)
  mixed = equal + [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 12, 24)]
  out = enc.encode(mixed, batch_size=4, max_length=64)
  assert enc._embed_packed._cache_size() == 1
  np.testing.assert_allclose(out, enc.encode(mixed, batch_size=4, max_length=64, packing=False),
                             atol=1e-5)
  assert encoder_lib.bucket_lengths(200) == (32, 48, 64, 96, 128, 192, 200)
