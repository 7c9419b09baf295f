"""Checkpoints: a run killed with SIGKILL and restarted ends with the same parameters as a run that
never stopped; restoring onto another mesh shape works; export reads a training checkpoint; the
command line rejects unknown config keys."""
import os
import signal
import textwrap

import numpy as np
import pytest

import jax

from reasonir_jax import sharding as shd


# One bucket length: every batch has the same shapes, so each run compiles the step once.
# vocab: the sample tokenizer's (ids beyond a smaller embedding would make every value NaN).
RUN_OVERRIDES = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "train.num_steps=6", "checkpoint.every_steps=2",
                 "checkpoint.keep=5", "train.log_every=1", "data.max_length=48",
                 "data.query_max_length=48", "data.passage_max_length=48", "data.bucket_lengths=(48,)"]

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    overrides, workdir, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def callback(step, state, metrics):
      if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final save
    train.run(load_config("tiny", overrides), workdir, step_callback=callback)
    """)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact_and_restores_onto_another_mesh(make_tiny_config, tmp_path,
                                                                      small_model_overrides,
                                                                      make_child_env,
                                                                      start_child_trainer):
  from reasonir_jax import train
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.step import build_trainer

  overrides = [*small_model_overrides, *RUN_OVERRIDES]
  killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
  env = make_child_env()
  # Runs while the reference trains here.
  proc = start_child_trainer(CHILD, overrides, killed_dir, 5, tmp_path, env)
  reference = train.run(make_tiny_config(*RUN_OVERRIDES), str(straight_dir))
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL, out
  steps = ckpt_lib.CheckpointManager(str(killed_dir)).all_steps()
  assert steps and max(steps) in (2, 4), (steps, out)

  resumed = start_child_trainer(CHILD, overrides, killed_dir, -1, tmp_path, env)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  assert f"from step {max(steps)}" in out

  # Restore the resumed run's final checkpoint onto another mesh shape and compare.
  cfg = make_tiny_config(*RUN_OVERRIDES, "mesh.shape=(2,2,2)")
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  manager = ckpt_lib.CheckpointManager(str(killed_dir), cfg.checkpoint)
  assert manager.latest_step() == 6
  state, data_state = manager.restore(trainer.abstract_state())
  manager.close()
  assert int(state.step) == 6 and data_state is not None
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(reference.params))
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params),
                               jax.tree.leaves(reference.params)):
    assert got.sharding.mesh.shape == trainer.mesh.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
  for got, want in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(reference.opt_state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(reference.rng))

  # Export from the training checkpoint and read the tensors back.
  from reasonir_jax import export
  from safetensors.numpy import load_file
  hf_dir = tmp_path / "hf"
  export.main(["--workdir", str(killed_dir), "--out", str(hf_dir)])
  tensors = load_file(str(hf_dir / "model.safetensors"))
  np.testing.assert_array_equal(tensors["embed_tokens.weight"],
                                np.asarray(state.params["embed_tokens"][...]))
  params, model_cfg, tokenizer_path = ckpt_lib.load_params_for_export(str(killed_dir), step=4)
  assert model_cfg.hidden_size == 32 and os.path.isdir(tokenizer_path)
  with pytest.raises(FileNotFoundError, match="step 3"):
    ckpt_lib.load_params_for_export(str(killed_dir), step=3)

  # --config.init_from=HF_DIR: the architecture comes from the HF config, the weights from it.
  from reasonir_jax.hf import load_hf
  from flax import nnx
  cfg = make_tiny_config("mesh.shape=(8,1,1)")
  cfg.model.hidden_size = 64  # a different width than the export: init_from must win
  cfg.init_from = str(hf_dir)
  cfg = train.with_hf_architecture(cfg)
  assert cfg.model.hidden_size == 32 and cfg.model.param_dtype == "float32"
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  model, _ = load_hf(str(hf_dir), mesh=trainer.mesh, rules=trainer.rules, show_progress=False)
  init = trainer.state_from_params(nnx.split(model, nnx.Param)[1])
  for got, want in zip(jax.tree.leaves(init.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert train.resolve_tokenizer(cfg) == str(hf_dir)


def test_cli_rejects_unknown_config_keys(tmp_path):
  from reasonir_jax import train
  with pytest.raises(SystemExit, match="optim.lr"):
    train.main(["--config=tiny", f"--workdir={tmp_path}", "--config.optim.lrr=1e-5"])
  with pytest.raises(SystemExit):
    train.main(["--config=tiny", f"--workdir={tmp_path}", "--bogus=1"])
