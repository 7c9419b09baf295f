"""The configs and their loader: `--config` with `--config.a.b=v` overrides through
ml_collections.config_flags, our error messages, the configs' former paths, and config.model
built from ModelConfig's defaults."""
import dataclasses
import os
import subprocess
import sys

import pytest

from reasonir_jax.configs import ConfigError, load_config, parse_config_flags, split_config_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_unknown_key_names_the_closest_valid_keys():
  with pytest.raises(ConfigError, match=r"^unknown config key 'optim.lrr'; did you mean: optim.lr"):
    load_config("tiny", ["optim.lrr=1e-5"])
  with pytest.raises(ConfigError, match=r"^unknown config key 'nope.x'$"):
    parse_config_flags("tiny", ["--config.nope.x=1"])
  with pytest.raises(ConfigError, match=r"config key 'train.global_batch_size': cannot use 'x'"):
    load_config("tiny", ["train.global_batch_size=x"])
  with pytest.raises(ConfigError, match="is not of the form key.path=value"):
    load_config("tiny", ["optim.lr"])
  with pytest.raises(ConfigError, match="config file not found"):
    load_config("no/such/config.py")


def test_the_trainer_command_line_reports_the_unknown_key(tmp_path):
  from reasonir_jax import train
  with pytest.raises(SystemExit, match=r"unknown config key 'optim.lrr'; did you mean: optim.lr"):
    train.main(["--config=tiny", f"--workdir={tmp_path}", "--config.optim.lrr=1e-5"])


def test_values_parse_by_the_type_of_the_key():
  c = load_config("tiny", ["optim.lr=1", "mesh.shape=(2,-1,1)", "data.packing=yes",
                           "data.skip_corrupt=True", "data.bucket_lengths=64",
                           "data.sources=pub=/d/a-*:2,hq=/d/b", "--config.train.num_steps=7"])
  assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.mesh.shape == (2, -1, 1) and c.data.bucket_lengths == (64,)
  assert c.data.packing is True and c.data.skip_corrupt is True
  assert c.data.sources == "pub=/d/a-*:2,hq=/d/b" and c.train.num_steps == 7
  assert load_config("tiny", ["data.packing=no"]).data.packing is False


def test_a_repeated_key_takes_its_last_value():
  config = load_config("tiny", ["mesh.shape=(4,2,1)", "optim.lr=1.0", "mesh.shape=(2,2,2)"])
  assert config.mesh.shape == (2, 2, 2) and config.optim.lr == 1.0


def test_overrides_split_from_other_flags_in_any_order():
  overrides, rest = split_config_args(["--config.optim.lr=1", "--workdir=w", "--config=tiny"])
  assert overrides == ["--config.optim.lr=1"] and rest == ["--workdir=w", "--config=tiny"]
  # config_flags wants the file before its overrides; the loader puts it there.
  assert parse_config_flags("tiny", overrides).optim.lr == 1.0


def test_former_config_paths_still_load_the_same_configs():
  for name in ("base", "tiny", "llama3_8b", "qwen3_8b", "qwen3_embedding_8b"):
    new = load_config(name).to_dict()
    assert load_config(os.path.join(REPO, "configs", f"{name}.py")).to_dict() == new, name
    assert load_config(os.path.join(REPO, "reasonir_jax", "configs", f"{name}.py")).to_dict() == new
  code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
          "try:\n  import reasonir_jax.config\nexcept DeprecationWarning as e:\n  print(e)\n"
          "import warnings; warnings.simplefilter('ignore')\n"
          "import reasonir_jax.config, reasonir_jax.configs, reasonir_jax.config_base\n"
          "assert reasonir_jax.config is reasonir_jax.configs\n"
          "assert reasonir_jax.config_base.base_config is reasonir_jax.configs.base.base_config")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "moved to reasonir_jax.configs" in out.stdout


def test_model_defaults_come_from_model_config():
  from reasonir_jax.configs.base import base_config
  from reasonir_jax.model import ModelConfig
  model = base_config().model.to_dict()
  assert model == dataclasses.asdict(ModelConfig())
  assert ModelConfig.from_config(load_config("llama3_8b").model).remat_policy == "offload"
  # The Qwen3 recipes build on the 8B recipe's training set-up, local tier included.
  qwen = load_config("qwen3_8b")
  assert ModelConfig.from_config(qwen.model).qk_norm and not qwen.model.causal
  assert qwen.checkpoint.local_every_seconds == 300.0 and qwen.model.remat_policy == "offload"
  embedding = ModelConfig.from_config(load_config("qwen3_embedding_8b").model)
  assert (embedding.causal, embedding.pooling, embedding.vocab_size) == (True, "last_token", 151665)


def test_hf_architecture_comes_as_a_new_config(tmp_path):
  import json
  from reasonir_jax import train
  from reasonir_jax.model import ModelConfig
  hf = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                   num_kv_heads=2, head_dim=8, rope_type="default").to_hf_dict()
  (tmp_path / "config.json").write_text(json.dumps(hf))
  cfg = load_config("tiny", [f"init_from={tmp_path}"])
  adopted = train.with_hf_architecture(cfg)
  assert (adopted.model.hidden_size, adopted.model.num_layers) == (32, 1)
  assert cfg.model.hidden_size == 64  # the config handed in is left as it is
  assert adopted.model.scan_layers == cfg.model.scan_layers
  assert adopted.model.remat_policy == cfg.model.remat_policy
  train.adopt_hf_model_config(cfg)  # the former, mutating name (one release)
  assert cfg.model.to_dict() == adopted.model.to_dict()


def test_one_tokenizer_choice_for_trainer_and_input_pipeline(tmp_path):
  from reasonir_jax import train
  from reasonir_jax.data.sample import sample_tokenizer_dir
  from reasonir_jax.tokenization import resolve_tokenizer
  assert resolve_tokenizer() == sample_tokenizer_dir()
  assert resolve_tokenizer("", str(tmp_path)) == sample_tokenizer_dir()  # no tokenizer there
  (tmp_path / "tokenizer.json").write_text("{}")
  assert resolve_tokenizer("", str(tmp_path)) == str(tmp_path)
  assert resolve_tokenizer("/tok", str(tmp_path)) == "/tok"
  cfg = load_config("tiny", [f"init_from={tmp_path}"])
  assert train.resolve_tokenizer(cfg) == str(tmp_path)
