"""HF import/export (Llama and Qwen3): round trips are bit-exact, transformers loads our export,
errors name things."""
import json
import os
import shutil

import pytest
import torch


def _torch_tensors(path):
  """All tensors of an HF directory (single file or shards) as float32/bf16 torch tensors."""
  from safetensors.torch import load_file
  files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
  out = {}
  for f in files:
    out.update(load_file(os.path.join(path, f)))
  return out


def _assert_same_tensors(ref: dict, ours: dict, prefix=""):
  ref = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in ref.items()
         if k != "lm_head.weight"}
  assert sorted(ref) == sorted(ours)
  for name, t in ref.items():
    assert ours[name].dtype == t.dtype, name
    assert torch.equal(ours[name], t), name


def test_round_trip_scanned_and_transformers_loads_export(hf_dir, tmp_path):
  import transformers
  from reasonir_jax.hf import load_hf, save_hf
  model, cfg = load_hf(hf_dir, show_progress=False, scan_layers=True)
  out = str(tmp_path / "export")
  save_hf(model, cfg, out, tokenizer=hf_dir, show_progress=False)
  _assert_same_tensors(_torch_tensors(hf_dir), _torch_tensors(out))
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["architectures"] == ["LlamaModel"]
  loaded = transformers.AutoModel.from_pretrained(out)
  assert type(loaded).__name__ == "LlamaModel"
  original = transformers.AutoModel.from_pretrained(hf_dir)
  for (n1, p1), (n2, p2) in zip(original.state_dict().items(), loaded.state_dict().items()):
    assert n1 == n2 and torch.equal(p1, p2), n1
  assert loaded.config.rope_parameters == original.config.rope_parameters
  assert os.path.isfile(os.path.join(out, "tokenizer.json"))


def test_causal_lm_shards_with_index_and_sharded_export(hf_model_factory, tmp_path):
  import transformers
  from reasonir_jax.hf import load_hf, save_hf
  base = hf_model_factory(seed=3)
  lm = transformers.LlamaForCausalLM(base.config)
  lm.model.load_state_dict(base.state_dict())
  src = str(tmp_path / "causal")
  lm.save_pretrained(src, max_shard_size="60KB")
  assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
  model, cfg = load_hf(src, show_progress=False, scan_layers=False)
  out = str(tmp_path / "export")
  save_hf(model, cfg, out, max_shard_bytes=50_000, show_progress=False)
  index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
  shards = set(index["weight_map"].values())
  assert len(shards) > 2
  for f in shards:  # a shard exceeds the limit only when one tensor alone does
    members = [n for n, g in index["weight_map"].items() if g == f]
    assert len(members) == 1 or os.path.getsize(os.path.join(out, f)) < 50_000 + 4096, f
  _assert_same_tensors(_torch_tensors(src), _torch_tensors(out), prefix="model.")
  loaded = transformers.AutoModel.from_pretrained(out)
  for name, p in base.state_dict().items():
    assert torch.equal(loaded.state_dict()[name], p), name


def test_bf16_checkpoint_round_trip(hf_model_factory, tmp_path):
  import transformers
  from reasonir_jax.hf import load_hf, save_hf
  src = str(tmp_path / "bf16")
  hf_model_factory(seed=4).to(torch.bfloat16).save_pretrained(src)
  model, cfg = load_hf(src, show_progress=False)
  assert cfg.param_dtype == "bfloat16"
  assert str(model.embed_tokens[...].dtype) == "bfloat16"
  out = str(tmp_path / "export")
  save_hf(model, cfg, out, show_progress=False)
  ours = _torch_tensors(out)
  assert all(t.dtype == torch.bfloat16 for t in ours.values())
  _assert_same_tensors(_torch_tensors(src), ours)
  assert transformers.AutoModel.from_pretrained(out).dtype == torch.bfloat16
  # Upcast on import is exact too: bf16 -> fp32 -> bf16.
  model32, cfg32 = load_hf(src, show_progress=False, param_dtype="float32")
  save_hf(model32, cfg32, str(tmp_path / "again"), dtype="bfloat16", show_progress=False)
  _assert_same_tensors(_torch_tensors(src), _torch_tensors(str(tmp_path / "again")))


def _rewrite(src, dst, edit):
  """Copies an HF dir, letting `edit(tensors)` change the tensor dict."""
  from safetensors.torch import load_file, save_file
  shutil.copytree(src, dst)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  edit(tensors)
  save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  return dst


def test_errors_name_the_tensor(hf_dir, tmp_path):
  from reasonir_jax.hf import load_hf
  missing = _rewrite(hf_dir, str(tmp_path / "missing"),
                     lambda t: t.pop("layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up_proj\.weight"):
    load_hf(missing, show_progress=False)

  extra = _rewrite(hf_dir, str(tmp_path / "extra"),
                   lambda t: t.update({"layers.0.self_attn.q_norm.weight": torch.ones(16)}))
  with pytest.raises(ValueError, match=r"unexpected tensor 'layers\.0\.self_attn\.q_norm\.weight' in .*model\.safetensors"):
    load_hf(extra, show_progress=False)

  def bad_shape(t):
    t["layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
  wrong = _rewrite(hf_dir, str(tmp_path / "shape"), bad_shape)
  with pytest.raises(ValueError, match=r"'layers\.0\.self_attn\.k_proj\.weight' in .*model\.safetensors has shape \(16, 64\), expected \(32, 64\)"):
    load_hf(wrong, show_progress=False)


def test_config_layouts_and_unknown_rope_type(hf_dir, tmp_path):
  from reasonir_jax.hf import load_hf, read_hf_config
  from reasonir_jax.model import ModelConfig
  new = read_hf_config(hf_dir)
  # The published Llama-3.1 layout: top-level rope_theta + rope_scaling, torch_dtype.
  old = {k: v for k, v in new.items() if k not in ("rope_parameters", "dtype", "head_dim")}
  rope = dict(new["rope_parameters"])
  old["rope_theta"] = rope.pop("rope_theta")
  old["rope_scaling"] = rope
  old["torch_dtype"] = "bfloat16"
  old["eos_token_id"] = [1, 5]
  a, b = ModelConfig.from_hf_dict(new), ModelConfig.from_hf_dict(old)
  assert a.replace(param_dtype="bfloat16", dtype="bfloat16") == b
  assert b.rope_type == "llama3" and b.rope_factor == 8.0 and b.head_dim == 16
  assert b.rope_original_max_position_embeddings == 16 and b.eos_token_id == 1
  # to_hf_dict -> from_hf_dict is the identity.
  assert ModelConfig.from_hf_dict(a.to_hf_dict()) == a

  bad = dict(new, rope_parameters=dict(new["rope_parameters"], rope_type="yarn"))
  with pytest.raises(ValueError, match="yarn"):
    ModelConfig.from_hf_dict(bad)
  d = str(tmp_path / "yarn")
  shutil.copytree(hf_dir, d)
  json.dump(bad, open(os.path.join(d, "config.json"), "w"))
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    load_hf(d, show_progress=False)
  with pytest.raises(ValueError, match="attention_bias"):
    ModelConfig.from_hf_dict(dict(new, attention_bias=True))


def test_model_config_from_repo_configs():
  from reasonir_jax.configs import load_config
  from reasonir_jax.model import ModelConfig
  cfg = ModelConfig.from_config(load_config("llama3_8b").model)
  assert (cfg.hidden_size, cfg.num_kv_heads, cfg.rope_type) == (4096, 8, "llama3")
  with pytest.raises(ValueError, match="remat_policy"):
    ModelConfig.from_config(dict(load_config("tiny").model.to_dict(), remat_policy="some"))


def test_export_config_has_both_rope_layouts_and_is_bidirectional(hf_dir, tmp_path):
  import transformers
  from reasonir_jax.hf import load_hf, read_hf_config, save_hf
  from reasonir_jax.model import ModelConfig
  model, cfg = load_hf(hf_dir, show_progress=False)
  out = str(tmp_path / "export")
  save_hf(model, cfg, out, tokenizer=hf_dir, show_progress=False)
  config = read_hf_config(out)
  assert config["is_causal"] is False
  rope = dict(config["rope_parameters"])
  assert config["rope_theta"] == rope.pop("rope_theta") == 500000.0
  assert config["rope_scaling"] == rope and rope["rope_type"] == "llama3"
  assert ModelConfig.from_hf_dict(config) == cfg  # our reader takes it back unchanged
  # Each layout alone gives the same transformers config.
  old = {k: v for k, v in config.items() if k != "rope_parameters"}
  new = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}
  assert (transformers.LlamaConfig(**old).rope_parameters
          == transformers.LlamaConfig(**new).rope_parameters
          == transformers.AutoConfig.from_pretrained(out).rope_parameters)
  assert transformers.AutoConfig.from_pretrained(out).is_causal is False
  for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
               "config_sentence_transformers.json"):
    assert os.path.isfile(os.path.join(out, name)), name
  pooling = json.load(open(os.path.join(out, "1_Pooling", "config.json")))
  assert pooling["pooling_mode_mean_tokens"] and pooling["include_prompt"] is False
  # Without a tokenizer there is nothing for sentence-transformers to tokenize with.
  bare = str(tmp_path / "bare")
  save_hf(model, cfg, bare, show_progress=False)
  assert not os.path.exists(os.path.join(bare, "modules.json"))


@pytest.mark.parametrize("transform,ours", [("identity", (6, 4)), ("transpose", (6, 4)),
                                            ("in_heads", (8, 4, 2)), ("out_heads", (4, 2, 8))])
def test_block_reads_match_whole_tensor_local_and_remote(tmp_path, transform, ours, gcs_emulator):
  import ml_dtypes
  import numpy as np
  from reasonir_jax.hf import mapping
  from reasonir_jax.hf.safetensors_io import SafetensorsFile, write_safetensors
  bucket = gcs_emulator.bucket()
  want = np.arange(np.prod(ours), dtype=np.float32).reshape(ours).astype(ml_dtypes.bfloat16)
  hf = mapping.to_hf(transform, want)
  for path in (str(tmp_path / "t.safetensors"), f"{bucket}/t.safetensors"):
    write_safetensors(path, [("w", hf.shape, hf.dtype)], lambda _: hf)
    st = SafetensorsFile(path)
    view = mapping.view_shape(transform, ours)
    for index in [tuple(slice(0, d // 2) for d in ours), tuple(slice(d // 2, d) for d in ours),
                  (slice(1, 3),) + tuple(slice(None) for _ in ours[1:])]:
      block = mapping.view_to_ours(transform, st.read_block("w", view,
                                                            mapping.view_index(transform, index)))
      np.testing.assert_array_equal(block, want[index], err_msg=f"{path} {index}")


def test_qwen3_round_trip_and_transformers_loads_export(tmp_path, qwen3_dir_factory):
  import transformers
  from safetensors.torch import load_file
  from reasonir_jax.hf import load_hf, read_hf_config, save_hf
  from reasonir_jax.model import ModelConfig
  hf, src = qwen3_dir_factory(str(tmp_path / "src"), seed=5, tie_word_embeddings=True)
  model, cfg = load_hf(src, show_progress=False, scan_layers=True)
  out = str(tmp_path / "export")
  save_hf(model, cfg, out, show_progress=False)
  ours, ref = load_file(os.path.join(out, "model.safetensors")), hf.model.state_dict()
  assert sorted(ours) == sorted(ref)
  assert "layers.0.self_attn.q_norm.weight" in ours
  for name, t in ref.items():
    assert torch.equal(ours[name], t), name
  config = read_hf_config(out)
  assert config["architectures"] == ["Qwen3Model"] and config["model_type"] == "qwen3"
  assert config["tie_word_embeddings"] is True and config["is_causal"] is False
  assert ModelConfig.from_hf_dict(config) == cfg
  loaded = transformers.AutoModel.from_pretrained(out)
  assert type(loaded).__name__ == "Qwen3Model" and loaded.config.is_causal is False
  for name, p in ref.items():
    assert torch.equal(loaded.state_dict()[name], p), name
  # Sliding-window attention is not the model we compute: refused by name.
  with pytest.raises(ValueError, match="use_sliding_window"):
    ModelConfig.from_hf_dict(dict(config, use_sliding_window=True))
  with pytest.raises(ValueError, match="model_type='mistral'"):
    ModelConfig.from_hf_dict(dict(config, model_type="mistral"))
