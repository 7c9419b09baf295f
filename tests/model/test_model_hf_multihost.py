"""Hugging Face import and export on 2 real jax.distributed processes (4 CPU devices each).

A sharded bf16 `LlamaForCausalLM` checkpoint (several shards, the published layout: top-level
`rope_theta` + `rope_scaling`, `torch_dtype`, no pad token) is imported onto an FSDP mesh over
both processes, trained 2 steps and exported. The export equals that of one 8-device process,
and during import no process read a block its devices do not hold nor ran a cross-host gather
(counted by wrapping the reader and JAX's multi-host collectives, not assumed).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(REPO, "tests")
sys.path.insert(0, TESTS)  # multihost_util, for this process and (via PYTHONPATH) the children
from multihost_util import free_port, two_process_env  # noqa: E402  pylint: disable=wrong-import-position
OVERRIDES = ["mesh.shape=(1,8,1)", "model.scan_layers=True", "optim.lr=1e-3"]

# Shared by the child processes and the single-process reference.
COMMON = textwrap.dedent("""
    import numpy as np, jax
    from flax import nnx
    from jax.experimental import multihost_utils
    from reasonir_jax import sharding as shd, train
    from reasonir_jax.configs import load_config
    from reasonir_jax.hf import load_hf, save_hf
    from reasonir_jax.hf.safetensors_io import SafetensorsFile
    from reasonir_jax.training.step import build_trainer
    from multihost_util import global_batch, local_rows

    def import_counting(hf_dir, trainer, cfg):
      # Count every block read and every cross-host collective while importing.
      counts = {"read_bytes": 0, "full_reads": 0, "assert_equal": 0, "process_allgather": 0,
                "device_put": 0}
      read_block, assert_equal = SafetensorsFile.read_block, multihost_utils.assert_equal
      allgather, device_put = multihost_utils.process_allgather, jax.device_put
      def counted_read(self, name, view, index):
        out = read_block(self, name, view, index)
        counts["read_bytes"] += out.nbytes
        counts["full_reads"] += int(out.size == int(np.prod(view)) and out.ndim > 1)
        return out
      def counter(key, fn):
        def wrapped(*a, **k):
          counts[key] += 1
          return fn(*a, **k)
        return wrapped
      SafetensorsFile.read_block = counted_read
      multihost_utils.assert_equal = counter("assert_equal", assert_equal)
      multihost_utils.process_allgather = counter("process_allgather", allgather)
      jax.device_put = counter("device_put", device_put)
      try:
        model, _ = load_hf(hf_dir, mesh=trainer.mesh, rules=trainer.rules, show_progress=False,
                           param_dtype=cfg.model.param_dtype, dtype=cfg.model.dtype,
                           scan_layers=cfg.model.scan_layers, remat_policy=cfg.model.remat_policy)
        jax.block_until_ready(nnx.state(model))
      finally:
        SafetensorsFile.read_block, multihost_utils.assert_equal = read_block, assert_equal
        multihost_utils.process_allgather, jax.device_put = allgather, device_put
      # What this process's devices hold, in the checkpoint's bf16 (replicated blocks once).
      held = 0
      for v in jax.tree.leaves(nnx.state(model)):
        blocks = {tuple((s.start, s.stop) for s in i)
                  for i in v.sharding.addressable_devices_indices_map(v.shape).values()}
        held += sum(int(np.prod([(b or n) - (a or 0) for (a, b), n in zip(blk, v.shape)]))
                    for blk in blocks) * 2
      counts["held_bytes"] = held
      return model, counts

    def import_train_export(hf_dir, out_dir, overrides):
      cfg = load_config("tiny", overrides)
      cfg.init_from = hf_dir
      cfg = train.with_hf_architecture(cfg)
      trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
      model, counts = import_counting(hf_dir, trainer, cfg)
      state = trainer.state_from_params(nnx.split(model, nnx.Param)[1])
      sh = trainer.batch_sharding
      batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, local_rows(sh, x), x.shape),
                           global_batch(cfg.model.vocab_size))
      losses = []
      for _ in range(2):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
      save_hf(nnx.merge(trainer.graphdef, state.params), trainer.model_cfg, out_dir,
              show_progress=False)
      return losses, counts
    """)

CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    from reasonir_jax.training import distributed
    address, pid, hf_dir, out_dir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    distributed.initialize(address, 2, pid)
    import jax
    assert jax.process_count() == 2 and jax.local_device_count() == 4
    """) + COMMON + textwrap.dedent("""
    losses, counts = import_train_export(hf_dir, out_dir, overrides)
    with open(os.path.join(os.path.dirname(out_dir), f"counts_{pid}.json"), "w") as f:
      json.dump({"losses": losses, **counts}, f)
    """)


def _published_checkpoint(hf_model_factory, path):
  """A bf16 LlamaForCausalLM in several shards with the published Llama-3.1 config layout."""
  import torch
  import transformers
  base = hf_model_factory(seed=5)
  lm = transformers.LlamaForCausalLM(base.config)
  lm.model.load_state_dict(base.state_dict())
  lm.to(torch.bfloat16).save_pretrained(path, max_shard_size="40KB")
  cfg_path = os.path.join(path, "config.json")
  cfg = json.load(open(cfg_path))
  rope = dict(cfg.pop("rope_parameters"))
  cfg["rope_theta"] = rope.pop("rope_theta")
  cfg["rope_scaling"] = rope
  cfg["torch_dtype"] = cfg.pop("dtype")
  cfg.pop("pad_token_id", None)
  cfg["architectures"] = ["LlamaForCausalLM"]
  json.dump(cfg, open(cfg_path, "w"), indent=2)
  return cfg


@pytest.mark.multiprocess
def test_two_process_import_train_export_matches_one_process(hf_model_factory, tmp_path):
  from safetensors.numpy import load_file
  hf_dir = str(tmp_path / "published")
  cfg = _published_checkpoint(hf_model_factory, hf_dir)
  shards = json.load(open(os.path.join(hf_dir, "model.safetensors.index.json")))["weight_map"]
  assert len(set(shards.values())) >= 4 and "lm_head.weight" in shards
  assert "rope_scaling" in cfg and "pad_token_id" not in cfg

  script = tmp_path / "child.py"
  script.write_text(CHILD)
  two_dir = str(tmp_path / "two" / "export")
  os.makedirs(os.path.dirname(two_dir))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]))
  env = two_process_env(env)
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen([sys.executable, str(script), address, str(pid), hf_dir, two_dir,
                             json.dumps(OVERRIDES)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
  namespace = {}
  exec(COMMON, namespace)  # the single-process, 8-device reference, while the children run
  one_dir = str(tmp_path / "one")
  ref_losses, ref_counts = namespace["import_train_export"](hf_dir, one_dir, OVERRIDES)
  for p in procs:
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-4000:]

  total = sum(os.path.getsize(os.path.join(hf_dir, f)) for f in set(shards.values()))
  for pid in (0, 1):
    counts = json.load(open(tmp_path / "two" / f"counts_{pid}.json"))
    np.testing.assert_allclose(counts["losses"], ref_losses, rtol=1e-5)
    # No cross-host gather or equality check, no device_put of a host array during import...
    assert counts["assert_equal"] == counts["process_allgather"] == counts["device_put"] == 0
    # ...and exactly the blocks this process's devices hold were read: about half the model.
    assert counts["read_bytes"] == counts["held_bytes"], counts
    assert counts["read_bytes"] < 0.6 * total, (counts, total)
    assert counts["full_reads"] == 0, counts
  # One process reads everything (the reference for the byte count).
  assert ref_counts["read_bytes"] == ref_counts["held_bytes"] > 0.95 * (total - 2 * 512 * 64)

  one = {}
  for f in os.listdir(one_dir):
    if f.endswith(".safetensors"):
      one.update(load_file(os.path.join(one_dir, f)))
  two = load_file(os.path.join(two_dir, "model.safetensors"))
  assert sorted(one) == sorted(two) and len(one) == 2 + 9 * 2
  for name, want in one.items():
    np.testing.assert_allclose(two[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
  # The export really moved away from the imported bf16 weights (2 Adam steps at lr 1e-3).
  from reasonir_jax.hf.safetensors_io import SafetensorsFile
  src = SafetensorsFile(os.path.join(hf_dir, shards["model.embed_tokens.weight"]))
  imported = src.get("model.embed_tokens.weight").astype(np.float32)
  assert np.abs(one["embed_tokens.weight"] - imported).max() > 1e-4
