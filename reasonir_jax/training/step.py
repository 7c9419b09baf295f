"""The jitted contrastive train step on globally sharded arrays, and the `Trainer` that builds it.

`build_trainer(config, mesh)` gives everything the train loop and the ahead-of-time compile
report need: `init_state(seed)`, `abstract_state()`, `abstract_batch(query_len, passage_len)` and
`train_step`, a `jax.jit` of `(state, batch) -> (state, metrics)` with its in/out shardings set
and the state donated. One step encodes queries and passages (optionally with GradCache), scores
every query against every passage of the global batch in fp32 and applies AdamW, unless the loss
or the gradient norm is not finite: then the update is skipped (metric `skipped_nonfinite`).
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from reasonir_jax import sharding as shd
from reasonir_jax.data.layout import BatchLayout
from reasonir_jax.model import ModelConfig, embed, embed_packed
from reasonir_jax.model.sharded import abstract_model, create_sharded_model
from reasonir_jax.training import grad_cache, loss as loss_lib, optimizer as optim_lib
from reasonir_jax.training import state as state_lib
from reasonir_jax.training.state import TrainState

INPUT_KEYS = ("input_ids", "attention_mask", "pool_mask")
PACKED_INPUT_KEYS = ("input_ids", "segment_ids", "positions", "pool_ids")


class Trainer:
  """Holds the model definition, optimiser, shardings and the jitted train step."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh,
               layout: BatchLayout | None = None):
    self.config = config
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    self.model_cfg = ModelConfig.from_config(config.model)
    # The batch layout is derived once (train.run hands the same one to the input pipeline).
    self.layout = layout or BatchLayout.from_config(config)
    self.global_batch = self.layout.global_batch
    self.group_size = self.layout.group_size
    self.temperature = float(config.train.temperature)
    self.chunk = int(config.train.grad_cache_chunk)
    self.num_data_shards = shd.data_parallel_size(mesh, self.rules)
    batch_spec = shd.logical_to_spec(("batch",), self.rules, mesh)[0]
    self.batch_axes = batch_spec
    self.layout.check_mesh(self.num_data_shards, self.chunk, dict(mesh.shape))
    self.num_texts = self.layout.num_texts
    # Packed inputs: [rows, L] per side holding every text of the batch (reasonir_jax.packing).
    self.packing = self.layout.packing
    self.packed_rows = self.layout.packed_rows

    seed = int(config.seed)
    self.graphdef, abstract_params, rest = abstract_model(self.model_cfg, filters=(nnx.Param, ...),
                                                          seed=seed)
    if jax.tree.leaves(rest):
      raise ValueError("the encoder holds non-Param state; the trainer only carries Params")
    self.abstract_params = abstract_params
    self.param_shardings = state_lib.expand_shardings(
        shd.param_shardings(abstract_params, mesh, self.rules), abstract_params)

    self.tx, self.schedule = optim_lib.make_optimizer(config.optim, int(config.train.num_steps))
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    self.opt_shardings = state_lib.opt_state_shardings(self.tx, abstract_opt, self.param_shardings, mesh)
    rep = state_lib.replicated(mesh)
    self.state_shardings = TrainState(step=rep, params=self.param_shardings,
                                      opt_state=self.opt_shardings, rng=rep)
    self.batch_sharding = shd.batch_sharding(mesh, self.rules)
    self.row_sharding = shd.named_sharding(mesh, self.rules, ("batch",))  # batch["row"]: [B] arrays
    self._abstract_opt = abstract_opt
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_shardings, None),
                              out_shardings=(self.state_shardings, rep), donate_argnums=(0,))

  # ---- pure functions -------------------------------------------------------------------------
  def encode(self, params, inputs: dict, num_texts: int) -> jax.Array:
    """fp32 L2-normalised embeddings [num_texts, D] of one side's padded or packed rows."""
    model = nnx.merge(self.graphdef, params)
    if grad_cache.is_packed(inputs):
      return embed_packed(model, *(inputs[k] for k in PACKED_INPUT_KEYS), num_texts)
    return embed(model, *(inputs[k] for k in INPUT_KEYS))

  def loss_fn(self, q_emb_bd, p_emb_nd, weights_b=None):
    return loss_lib.contrastive_loss(q_emb_bd, p_emb_nd, temperature=self.temperature,
                                     group_size=self.group_size, weights_b=weights_b)

  def loss_and_grads(self, params, batch: dict):
    """((loss, metrics), grads), full batch or GradCache per `config.train.grad_cache_chunk`.
    The row weights (batch["row"]["weight"], when present) are constants of the loss, so
    GradCache's embedding gradients, and with them its parameter gradients, carry them exactly."""
    weights = batch.get("row", {}).get("weight")
    loss_fn = lambda q, p: self.loss_fn(q, p, weights)
    with shd.activation_sharding(self.mesh, self.rules):
      if self.chunk:
        return grad_cache.grad_cache_value_and_grad(
            self.encode, loss_fn, params, batch, chunk_size=self.chunk,
            num_shards=self.num_data_shards, mesh=self.mesh, batch_axes=self.batch_axes,
            num_texts=self.num_texts)
      return grad_cache.full_batch_value_and_grad(self.encode, loss_fn, params, batch,
                                                  self.num_texts)

  def _train_step(self, state: TrainState, batch: dict):
    batch = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self.input_sharding(x)), batch)
    (loss, metrics), grads = self.loss_and_grads(state.params, batch)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient norm never reaches the parameters or the optimiser state:
    # both stay bitwise as they were, so the optimiser's count (the learning-rate schedule and
    # Adam's bias correction) does not advance either. `step` still counts the batch consumed.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_skipped = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_if_skipped, params, state.params)
    opt_state = jax.tree.map(keep_if_skipped, opt_state, state.opt_state)
    rng, _ = jax.random.split(state.rng)
    metrics = dict(metrics, grad_norm=grad_norm, lr=self.schedule(applied_updates(state.opt_state)),
                   skipped_nonfinite=jnp.logical_not(finite).astype(jnp.float32),
                   **token_counts(batch))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  # ---- states and batches ---------------------------------------------------------------------
  def init_state(self, rng_or_seed: int | jax.Array | None = None) -> TrainState:
    """A fresh state: random parameters created directly in their sharding."""
    seed = int(self.config.seed) if rng_or_seed is None else rng_or_seed
    if not isinstance(seed, int):
      seed = int(jax.random.randint(seed, (), 0, 2**31 - 1))
    model = create_sharded_model(self.model_cfg, self.mesh, self.rules, seed)
    _, params = nnx.split(model, nnx.Param)
    return self.state_from_params(params, seed)

  def state_from_params(self, params, seed: int | None = None) -> TrainState:
    """A step-0 state around given parameters (e.g. imported from a Hugging Face directory)."""
    seed = int(self.config.seed) if seed is None else seed
    params = jax.device_put(params, self.param_shardings)
    params = jax.tree.map(lambda a, ab: a.astype(ab.dtype), params, self.abstract_params)
    opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)
    return TrainState(step=state_lib.zero_step(self.mesh), params=params, opt_state=opt_state,
                      rng=state_lib.initial_rng(seed, self.mesh))

  def abstract_state(self) -> TrainState:
    """The state as ShapeDtypeStructs carrying their shardings (nothing is allocated)."""
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params,
                          opt_state=self._abstract_opt,
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    return state_lib.with_shardings(abstract, self.state_shardings)

  def abstract_batch(self, query_len: int, passage_len: int) -> dict:
    """A global batch as ShapeDtypeStructs: B queries of query_len, B*G passages of passage_len
    (padded), or with config.data.packing the packed rows of those lengths; B row weights."""
    keys = PACKED_INPUT_KEYS if self.packing else INPUT_KEYS
    rows = self.packed_rows or self.num_texts

    def side(rows, length):
      return {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=self.batch_sharding)
              for k in keys}
    return {"query": side(rows["query"], query_len), "passage": side(rows["passage"], passage_len),
            "row": {"weight": jax.ShapeDtypeStruct((self.global_batch,), jnp.float32,
                                                   sharding=self.row_sharding)}}

  def compile_steps(self, log=print) -> dict[tuple[int, int], Any]:
    """The train step compiled for every shape of `step_shapes`, before the run's first step:
    a shape first met mid-run would leave the whole pod idle while it compiles (minutes at 8B).
    With a persistent compilation cache a restart reads them back instead."""
    shapes = self.layout.step_shapes
    compiled = {}
    for i, (q, p) in enumerate(shapes):
      t0 = time.perf_counter()
      compiled[q, p] = self.train_step.lower(self.abstract_state(),
                                             self.abstract_batch(q, p)).compile()
      log(f"compiled the train step for shape {i + 1}/{len(shapes)} (query {q}, passage {p}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return compiled

  def place_batch(self, batch: dict) -> dict:
    """Puts a host (NumPy) global batch into the batch sharding; jax.Arrays pass through."""
    return jax.tree.map(
        lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, self.input_sharding(x)), batch)

  def input_sharding(self, x):
    """[rows, L] inputs split their rows over the batch axes; so do [B] per-row arrays."""
    return self.batch_sharding if x.ndim > 1 else self.row_sharding


def applied_updates(opt_state) -> jax.Array:
  """Updates the optimiser has applied: the count its learning-rate schedule reads (skipped
  non-finite steps leave it where it was, so it can trail `TrainState.step`)."""
  counts = [v for path, v in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
            if any(getattr(k, "tuple_name", "") == "ScaleByScheduleState" for k in path)]
  if len(counts) != 1:
    raise ValueError(f"expected one learning-rate schedule count in the optimiser state, found "
                     f"{len(counts)}")
  return counts[0]


def step_shapes(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """Every (query, passage) row length a run's batches can have (BatchLayout.step_shapes)."""
  return BatchLayout.from_config(config).step_shapes


def token_counts(batch: dict) -> dict[str, jax.Array]:
  """Useful (non-padding) tokens of a padded or packed global batch and its token slots."""
  sides = (batch["query"], batch["passage"])
  useful = sum(jnp.sum((side["segment_ids" if grad_cache.is_packed(side) else "attention_mask"]
                        > 0).astype(jnp.int32)) for side in sides)
  slots = sum(side["input_ids"].size for side in sides)
  return {"useful_tokens": useful, "token_slots": jnp.asarray(slots, jnp.int32)}


def build_trainer(config: ml_collections.ConfigDict, mesh: Mesh,
                  layout: BatchLayout | None = None) -> Trainer:
  return Trainer(config, mesh, layout)
