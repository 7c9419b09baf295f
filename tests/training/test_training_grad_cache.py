"""GradCache equals the full-batch gradient, and its chunks stay sharded over all data devices."""
import functools

import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasonir_jax.training import grad_cache, loss as loss_lib

VOCAB, DIM = 64, 16


def standin_encode(params, inputs, num_texts):
  """A small encoder of the same signature as the real one: embed, mix, mean-pool, normalise."""
  ids, mask, pool = inputs["input_ids"], inputs["attention_mask"], inputs["pool_mask"]
  assert num_texts == ids.shape[0]
  x = params["emb"][ids] * mask[..., None]
  x = jnp.tanh(x @ params["w"]) + x
  ctx = jnp.sum(x, axis=1, keepdims=True) / jnp.maximum(jnp.sum(mask, 1), 1)[:, None, None]
  x = jnp.tanh((x + ctx) @ params["w2"])
  w = pool[..., None].astype(jnp.float32)
  e = jnp.sum(x * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6)


def make_batch(rng, rows, length):
  ids = rng.integers(3, VOCAB, size=(rows, length)).astype(np.int32)
  lens = rng.integers(length // 2, length + 1, size=rows)
  mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
  pool = mask.copy()
  pool[:, :2] = 0
  return {"input_ids": ids, "attention_mask": mask, "pool_mask": pool}


def test_grad_cache_equals_full_batch_on_sharded_mesh():
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
  axes = ("data", "fsdp")
  rng = np.random.default_rng(0)
  b, g = 16, 3
  batch = {"query": make_batch(rng, b, 8), "passage": make_batch(rng, b * g, 12)}
  batch = jax.device_put(batch, NamedSharding(mesh, P(axes)))
  params = {"emb": jnp.asarray(rng.normal(size=(VOCAB, DIM)), jnp.float32),
            "w": jnp.asarray(rng.normal(size=(DIM, DIM)) / 4, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(DIM, DIM)) / 4, jnp.float32)}
  loss_fn = functools.partial(loss_lib.contrastive_loss, temperature=0.05, group_size=g)

  full = jax.jit(lambda p, bt: grad_cache.full_batch_value_and_grad(standin_encode, loss_fn, p, bt))
  (loss_ref, m_ref), g_ref = full(params, batch)
  for chunk in (8, 16):
    cached = jax.jit(lambda p, bt: grad_cache.grad_cache_value_and_grad(
        standin_encode, loss_fn, p, bt, chunk_size=chunk, num_shards=8, mesh=mesh, batch_axes=axes))
    (loss, m), grads = cached(params, batch)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)
    np.testing.assert_allclose(float(m["accuracy"]), float(m_ref["accuracy"]))
    for k in params:
      np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(g_ref[k]), rtol=1e-5, atol=1e-6)


def test_chunks_are_sharded_without_communication():
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
  axes = ("data", "fsdp")
  x = np.arange(64 * 5, dtype=np.int32).reshape(64, 5)
  xs = jax.device_put(x, NamedSharding(mesh, P(axes)))
  fn = jax.jit(lambda a: grad_cache.chunk_rows(a, 4, 8, mesh, axes))
  compiled = fn.lower(xs).compile()
  hlo = compiled.as_text()
  for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
    assert op not in hlo, f"chunking moves data between devices ({op})"
  chunks = fn(xs)
  assert chunks.shape == (4, 16, 5)
  assert chunks.sharding.spec == P(None, axes)
  # Each device keeps exactly the rows it held: chunk c of device d is sub-block c of d's block.
  for shard in chunks.addressable_shards:
    assert shard.data.shape == (4, 2, 5)
  for d, dev in enumerate(mesh.devices.reshape(-1)):
    local = [s for s in chunks.addressable_shards if s.device == dev][0]
    np.testing.assert_array_equal(np.asarray(local.data).reshape(8, 5), x[d * 8:(d + 1) * 8])
  back = jax.jit(lambda c: grad_cache.unchunk_rows(c, 8, mesh, axes))(chunks)
  np.testing.assert_array_equal(np.asarray(back), x)


def test_chunk_size_errors_name_the_flag():
  import pytest
  with pytest.raises(ValueError, match="grad_cache_chunk"):
    grad_cache.check_chunking(16, 6, 2)
  with pytest.raises(ValueError, match="grad_cache_chunk"):
    grad_cache.check_chunking(20, 8, 8)
