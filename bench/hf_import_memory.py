"""Host memory of a Hugging Face import on 2 jax.distributed processes (4 CPU devices each).

Writes a bf16 Llama checkpoint with 8B-like proportions scaled down (vocab 32768, width 1024,
GQA 8/4 heads of 128, MLP 3584), then imports it onto an FSDP mesh over both processes in
fp32. Each process traces its host allocations (tracemalloc sees every NumPy buffer) and
reports its peak next to two references from the same checkpoint: the largest tensor in fp32
(what a whole-tensor reader holds at least) and this process's share of it (its blocks of that
tensor). The peak should sit near the share, about half the tensor.

  python bench/hf_import_memory.py [--vocab 32768] [--hidden 1024] [--layers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

CHILD = textwrap.dedent("""
    import json, os, sys, tracemalloc
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from reasonir_jax.training import distributed
    address, pid, hf_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    distributed.initialize(address, 2, pid)
    import jax, ml_collections, numpy as np
    from flax import nnx
    from reasonir_jax import sharding as shd
    from reasonir_jax.hf import load_hf
    mesh = shd.make_mesh(ml_collections.ConfigDict({"shape": (1, 8, 1), "axes": ("data", "fsdp", "tensor")}))
    tracemalloc.start()
    model, _ = load_hf(hf_dir, mesh=mesh, show_progress=False, param_dtype="float32", dtype="float32")
    leaves = jax.tree.leaves(nnx.state(model))
    jax.block_until_ready(leaves)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    largest = max(leaves, key=lambda a: a.size)
    share = sum(s.data.nbytes for s in largest.addressable_shards)
    print(json.dumps({"pid": pid, "peak": peak, "largest": largest.nbytes, "share": share}))
    """)


def write_checkpoint(path: str, vocab: int, hidden: int, layers: int) -> None:
  import ml_dtypes
  import numpy as np
  from reasonir_jax.hf import mapping
  from reasonir_jax.hf.save import hf_config
  from reasonir_jax.hf.safetensors_io import write_safetensors
  from reasonir_jax.model import ModelConfig
  cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 7 // 2,
                    num_layers=layers, num_heads=hidden // 128, num_kv_heads=hidden // 256,
                    head_dim=128, param_dtype="bfloat16", dtype="bfloat16")
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder
  cfg = cfg.replace(scan_layers=False)
  state = nnx.state(nnx.eval_shape(lambda: LlamaEncoder(cfg, rngs=nnx.Rngs(0))))
  shapes = {e.hf_names[0]: mapping.hf_shape(e.transform, mapping.get_path(state, e.path).shape)
            for e in mapping.param_entries(layers, scanned=False)}
  rng = np.random.default_rng(0)
  bf16 = np.dtype(ml_dtypes.bfloat16)
  write_safetensors(os.path.join(path, "model.safetensors"),
                    [(n, s, bf16) for n, s in shapes.items()],
                    lambda n: rng.standard_normal(shapes[n], np.float32).astype(bf16))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config(cfg, "bfloat16"), f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--hidden", type=int, default=1024)
  parser.add_argument("--layers", type=int, default=2)
  args = parser.parse_args()
  from multihost_util import free_port
  with tempfile.TemporaryDirectory() as tmp:
    write_checkpoint(tmp, args.vocab, args.hidden, args.layers)
    script = os.path.join(tmp, "child.py")
    with open(script, "w") as f:
      f.write(CHILD)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, script, address, str(pid), tmp], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in (0, 1)]
    mib = 1 << 20
    for p in procs:
      out, _ = p.communicate(timeout=900)
      if p.returncode:
        raise SystemExit(out[-3000:])
      r = json.loads(out.strip().splitlines()[-1])
      print(f"process {r['pid']}: peak host allocations {r['peak'] / mib:.1f} MiB; largest tensor "
            f"(fp32) {r['largest'] / mib:.1f} MiB, this process's share {r['share'] / mib:.1f} MiB; "
            f"peak / share {r['peak'] / r['share']:.2f}, peak / tensor {r['peak'] / r['largest']:.2f}")


if __name__ == "__main__":
  main()
