"""The embedding lookup under FSDP: its gradient must not be fully rematerialised.

With the table's embed dim split over "fsdp" (which also splits the batch) and the gradient kept
in the table's layout, XLA could not move the batch-split [b, l, d] cotangent into the table's
embed-split layout. It logged "Involuntary full rematerialization" and either all-gathered the
whole cotangent onto every device or scatter-added it into a full [vocab, d] gradient that it
then all-reduced. The numbers were right; the time and memory were not.
"""
import re

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from reasonir_jax import sharding as shd
from reasonir_jax.configs.base import SHARDING_RULES
from reasonir_jax.model import LlamaEncoder, ModelConfig

B, L, D, V = 16, 16, 64, 192  # V differs from every weight's dimensions
_COLLECTIVE = re.compile(r"= (\(?[^=]*?\)?) (all-gather|all-reduce)(-start)?\(")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def _collective_shapes(hlo: str) -> dict[tuple[int, ...], str]:
  """Every array shape an all-gather or all-reduce produces -> one HLO line producing it."""
  shapes = {}
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(line)
    if m:
      for dims in _SHAPE.findall(m.group(1)):
        shapes.setdefault(tuple(int(d) for d in dims.split(",") if d), line.strip()[:200])
  return shapes


def test_fsdp_embedding_gradient_is_not_fully_rematerialised(capfd):
  cfg = ModelConfig(vocab_size=V, hidden_size=D, intermediate_size=128, num_layers=1,
                    num_heads=4, num_kv_heads=2, head_dim=16, rope_type="default",
                    dtype="float32", remat_policy="none")
  mesh = shd.make_mesh(ml_collections.ConfigDict(dict(shape=(2, 4, 1),
                                                      axes=("data", "fsdp", "tensor"))))
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LlamaEncoder(cfg, rngs=nnx.Rngs(0))))
  shardings = shd.param_shardings(abstract, mesh, SHARDING_RULES)
  assert shardings["embed_tokens"].spec[1] == "fsdp"
  # Abstract parameters carrying their shardings (the sharding tree is a prefix of the state's).
  params = jax.tree.map(
      lambda s, var: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), var),
      shardings, abstract)
  ids = jax.ShapeDtypeStruct((B, L), jnp.int32, sharding=shd.batch_sharding(mesh, SHARDING_RULES))

  def loss(p, ids_bl, mask_bl):
    with shd.activation_sharding(mesh, SHARDING_RULES):
      return jnp.mean(nnx.merge(graphdef, p)(ids_bl, mask_bl) ** 2)

  capfd.readouterr()
  # As in training, the gradient lands in the parameters' (FSDP) layout.
  grad_fn = jax.jit(jax.grad(loss), out_shardings=shardings)
  hlo = grad_fn.lower(params, ids, ids).compile().as_text()
  err = capfd.readouterr().err
  assert "Involuntary full rematerialization" not in err, err[-2000:]
  shapes = _collective_shapes(hlo)
  assert shapes, "no collectives: the model was not sharded"
  for full, what in (((B, L, D), "the whole [b, l, d] activation"),
                     ((V, D), "an unsharded [vocab, d] embedding gradient")):
    assert full not in shapes, f"{what} goes through a collective: {shapes[full]}"
