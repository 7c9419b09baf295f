"""`Encoder` and its export: plain transformers and sentence-transformers load the export as-is
and give `Encoder.encode`'s embeddings; the known traps (double BOS, template bytes, bf16) are
pinned; order, buckets and pooling; training workdirs and remote paths load sharded."""
import json
import os
import re

import numpy as np
import pytest
import torch

TEXTS = [
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Binary search halves the interval.",
    "x",
    "Plate tectonics explains earthquakes, volcanoes and the drift of continents over time. " * 3,
    "Unicode: café, naïve, 東京",
]
INSTRUCTION = "Given a biology post, retrieve relevant passages that help answer the post"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def encoder(hf_dir):
  from reasonir_jax import Encoder
  return Encoder.from_pretrained(hf_dir, dtype="float32", show_progress=False)


@pytest.fixture(scope="module")
def export_dir(encoder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export"))
  encoder.save_pretrained(out, prompts={"biology": INSTRUCTION}, max_length=64)
  return out


def _doc_blocks():
  return re.findall(r"```python\n(.*?)```", open(os.path.join(REPO, "docs", "hf_usage.md")).read(),
                    re.S)


def _run_doc_block(block: str, export_dir: str) -> dict:
  namespace = {}
  exec(block.replace("path/to/export", export_dir), namespace)  # pylint: disable=exec-used
  return namespace


def test_plain_transformers_doc_snippet_matches_encode(encoder, export_dir):
  config = json.load(open(os.path.join(export_dir, "config.json")))
  assert config["is_causal"] is False and config["architectures"] == ["LlamaModel"]
  assert config["rope_parameters"]["rope_type"] == "llama3"  # both layouts
  assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
  assert config["rope_scaling"]["factor"] == config["rope_parameters"]["factor"]
  snippet = _run_doc_block(_doc_blocks()[1], export_dir)
  assert snippet["scores"].shape == (1, 1)
  for instruction in (INSTRUCTION, None):
    ref = snippet["encode"](TEXTS, instruction, max_length=64).numpy()
    ours = encoder.encode(TEXTS, instruction=instruction, batch_size=2, max_length=64)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
  # The export is bidirectional in plain transformers: token 0 sees the last token.
  model = snippet["model"]
  ids = torch.tensor([[0, 5, 6, 7], [0, 5, 6, 8]])
  hidden = model(input_ids=ids).last_hidden_state
  assert (hidden[0, 0] - hidden[1, 0]).abs().max() > 1e-4
  # The explicit reference (patched modules + 4-D mask) agrees.
  from reasonir_jax.hf.torch_reference import encode as torch_encode
  np.testing.assert_allclose(torch_encode(model, snippet["tokenizer"], TEXTS[:3], INSTRUCTION).numpy(),
                             snippet["encode"](TEXTS[:3], INSTRUCTION).numpy(), atol=1e-6)


def test_sentence_transformers_loads_export(encoder, export_dir):
  from sentence_transformers import SentenceTransformer
  snippet = _run_doc_block(_doc_blocks()[0], export_dir)
  assert snippet["scores"].shape == (1, 1)
  model = SentenceTransformer(export_dir, device="cpu")
  queries = model.encode(TEXTS, prompt_name="biology", batch_size=2)
  docs = model.encode(TEXTS, batch_size=2)  # the default prompt: documents
  np.testing.assert_allclose(queries, encoder.encode(TEXTS, INSTRUCTION, max_length=64), atol=1e-5)
  np.testing.assert_allclose(docs, encoder.encode(TEXTS, max_length=64), atol=1e-5)
  assert model.max_seq_length == 64


def test_template_bytes_are_literal(encoder, export_dir):
  from reasonir_jax.tokenization import format_prompt, prompt_prefix
  assert prompt_prefix(INSTRUCTION).encode() == (
      b"<|user|>\nGiven a biology post, retrieve relevant passages that help answer the post\n"
      b"<|embed|>\n")
  assert prompt_prefix(None).encode() == b"<|embed|>\n" == prompt_prefix("").encode()
  assert format_prompt("t", "i").encode() == b"<|user|>\ni\n<|embed|>\nt"
  raw = open(os.path.join(export_dir, "config_sentence_transformers.json"), "rb").read()
  assert b'"document": "<|embed|>\\n"' in raw
  assert b'"biology": "<|user|>\\nGiven a biology post, retrieve relevant passages that help ' \
         b'answer the post\\n<|embed|>\\n"' in raw
  # The ids Encoder feeds the model decode to exactly BOS + template + text.
  (ids, prefix_len), = encoder.prompt_tokenizer.encode(["Binary search."], INSTRUCTION, 64)
  tok = encoder.tokenizer
  assert tok.decode(ids[:prefix_len]).encode() == b"<|begin_of_text|>" + prompt_prefix(INSTRUCTION).encode()
  assert tok.decode(ids[prefix_len:]) == "Binary search."


def _bos_adding_tokenizer(tokenizer_dir, out_dir, with_eos=False):
  """The shipped-style tokenizer made to add BOS itself (Llama-3's behaviour), or BOS and EOS."""
  from tokenizers import processors
  from reasonir_jax.tokenization import load_tokenizer
  tok = load_tokenizer(tokenizer_dir)
  bos, eos = tok.bos_token, tok.eos_token
  single = f"{bos}:0 $A:0" + (f" {eos}:0" if with_eos else "")
  specials = [(bos, tok.bos_token_id)] + ([(eos, tok.eos_token_id)] if with_eos else [])
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single=single, pair=f"{single} $B:1", special_tokens=specials)
  tok.save_pretrained(out_dir)
  return tok


def test_tokenizer_that_adds_bos_itself_gives_one_bos(encoder, hf_dir, tokenizer_dir, tmp_path):
  import shutil
  from reasonir_jax import Encoder
  from reasonir_jax.hf.tokenizer_export import adds_bos_only, prepare_tokenizer
  plain = encoder.tokenizer
  assert plain("a b")["input_ids"][0] != plain.bos_token_id  # the test tokenizer adds nothing
  d = str(tmp_path / "bos")
  shutil.copytree(hf_dir, d)
  tok = _bos_adding_tokenizer(tokenizer_dir, d)
  assert tok("a b")["input_ids"][0] == tok.bos_token_id and adds_bos_only(tok)
  enc = Encoder.from_pretrained(d, dtype="float32", show_progress=False)
  for (ids, n), (ids0, n0) in zip(enc.prompt_tokenizer.encode(TEXTS, INSTRUCTION, 64),
                                  encoder.prompt_tokenizer.encode(TEXTS, INSTRUCTION, 64)):
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert (ids, n) == (ids0, n0)
  np.testing.assert_array_equal(enc.encode(TEXTS, INSTRUCTION, max_length=64),
                                encoder.encode(TEXTS, INSTRUCTION, max_length=64))
  # The export keeps a BOS-only tokenizer as it is, and makes the others add exactly one BOS.
  assert prepare_tokenizer(tok).backend_tokenizer.post_processor.__getstate__() == \
      tok.backend_tokenizer.post_processor.__getstate__()
  for source in (plain, _bos_adding_tokenizer(tokenizer_dir, str(tmp_path / "eos"), True)):
    fixed = prepare_tokenizer(source)
    assert adds_bos_only(fixed) and fixed.pad_token == "<|finetune_right_pad_id|>"
  assert not adds_bos_only(_bos_adding_tokenizer(tokenizer_dir, str(tmp_path / "eos2"), True))
  # No pad token (as Llama-3.1): the export sets <|finetune_right_pad_id|>, else EOS.
  import copy
  nopad = copy.deepcopy(plain)
  nopad.pad_token = None
  assert nopad.pad_token_id is None
  assert prepare_tokenizer(nopad).pad_token == "<|finetune_right_pad_id|>"
  assert plain.pad_token_id is not None  # the caller's tokenizer is left alone


def test_bf16_matches_transformers_in_bf16(encoder, export_dir, tmp_path):
  """bf16 against bf16: the same weights (rounded to bf16 once) run by transformers in bf16 and by
  our Encoder in bf16. Tolerance: 1e-2 per coordinate of the normalised 64-d embedding (bf16 keeps
  8 mantissa bits, ~4e-3 relative per operation, and the two sides round in different places;
  measured ~3e-3). Each side is also within 1e-2 of the fp32 result, and the two bf16 runs are
  far closer to each other than two different texts are."""
  from sentence_transformers import SentenceTransformer
  from reasonir_jax import Encoder
  bf16_dir = str(tmp_path / "bf16")
  encoder.save_pretrained(bf16_dir, dtype="bfloat16", prompts={"biology": INSTRUCTION},
                          max_length=64)
  assert json.load(open(os.path.join(bf16_dir, "config.json")))["dtype"] == "bfloat16"
  ours = Encoder.from_pretrained(bf16_dir, dtype="bfloat16", show_progress=False)
  assert ours.model_cfg.dtype == "bfloat16"
  model = SentenceTransformer(bf16_dir, device="cpu")
  assert next(model.parameters()).dtype == torch.bfloat16
  theirs = model.encode(TEXTS, prompt_name="biology").astype(np.float32)
  got = ours.encode(TEXTS, INSTRUCTION, max_length=64)
  fp32 = encoder.encode(TEXTS, INSTRUCTION, max_length=64)
  np.testing.assert_allclose(got, theirs, atol=1e-2)
  np.testing.assert_allclose(got, fp32, atol=1e-2)
  np.testing.assert_allclose(theirs, fp32, atol=1e-2)
  assert np.abs(got - theirs).max() < 0.2 * np.abs(fp32[0] - fp32[1]).max()


def test_order_buckets_and_batch_independence(encoder):
  batched = encoder.encode(TEXTS, instruction=INSTRUCTION, batch_size=2, max_length=64)
  alone = np.stack([encoder.encode([t], instruction=INSTRUCTION, batch_size=1, max_length=64)[0]
                    for t in TEXTS])
  np.testing.assert_allclose(batched, alone, atol=2e-5)
  perm = [3, 0, 4, 2, 1]
  shuffled = encoder.encode([TEXTS[i] for i in perm], instruction=INSTRUCTION, batch_size=2,
                            max_length=64)
  np.testing.assert_allclose(shuffled, batched[perm], atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(batched, axis=-1), 1.0, atol=1e-5)
  # Different texts differ; the instruction changes the query embedding.
  assert np.abs(batched[0] - batched[1]).max() > 1e-3
  docs = encoder.encode(TEXTS, batch_size=2, max_length=64)
  assert np.abs(docs[0] - batched[0]).max() > 1e-3
  assert encoder.encode([], max_length=64).shape == (0, 64)
  # A token budget below the texts' lengths splits them into smaller batches, same embeddings.
  budgeted = encoder.encode(TEXTS, instruction=INSTRUCTION, batch_size=2, max_length=64,
                            budget_length=8)
  np.testing.assert_allclose(budgeted, batched, atol=2e-5)


def test_instruction_tokens_are_not_pooled(encoder):
  from reasonir_jax.tokenization import BOS_TOKEN, prompt_prefix
  tok = encoder.tokenizer
  prefix_ids = encoder.prompt_tokenizer.prefix_ids(INSTRUCTION)
  direct = tok(BOS_TOKEN + prompt_prefix(INSTRUCTION), add_special_tokens=False)["input_ids"]
  assert list(prefix_ids) == direct and direct.count(tok.bos_token_id) == 1
  (ids, prefix_len), = encoder.prompt_tokenizer.encode([TEXTS[0]], INSTRUCTION, 64)
  assert prefix_len == len(direct)
  hidden = np.asarray(encoder.model(np.array([ids], np.int32), np.ones((1, len(ids)), np.int32)))
  mean = hidden[0, prefix_len:].mean(0)
  expected = mean / np.linalg.norm(mean)
  got = encoder.encode([TEXTS[0]], instruction=INSTRUCTION, max_length=64)[0]
  np.testing.assert_allclose(got, expected, atol=1e-5)
  with_prefix = hidden[0].mean(0)
  assert np.abs(got - with_prefix / np.linalg.norm(with_prefix)).max() > 1e-3
  with pytest.raises(ValueError, match="max_length=8"):
    encoder.encode(["a"], instruction=INSTRUCTION, max_length=8)


def test_save_reload_and_errors(encoder, export_dir, tmp_path):
  from reasonir_jax import Encoder
  again = Encoder.from_pretrained(export_dir, dtype="float32", show_progress=False)
  np.testing.assert_array_equal(again.encode(TEXTS, max_length=64),
                                encoder.encode(TEXTS, max_length=64))
  with pytest.raises(FileNotFoundError, match="neither config.json"):
    Encoder.from_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match="dtype"):
    Encoder.from_pretrained(export_dir, dtype="int8")
  with pytest.raises(ValueError, match="'document'"):
    encoder.save_pretrained(str(tmp_path / "bad"), prompts={"document": "x"})


def _training_workdir(encoder, tokenizer_dir, path):
  """A real training workdir: the saved config and an Orbax checkpoint of the encoder's params."""
  from flax import nnx
  from reasonir_jax import sharding as shd
  from reasonir_jax.configs import load_config
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.step import build_trainer
  cfg = load_config("tiny", ["mesh.shape=(8,1,1)"])
  for k, v in encoder.model_cfg.__dict__.items():
    if k in cfg.model and k not in ("remat_policy",):
      cfg.model[k] = v
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  state = trainer.state_from_params(nnx.split(encoder.model, nnx.Param)[1])
  ckpt_lib.save_config(path, cfg, tokenizer_dir)
  manager = ckpt_lib.CheckpointManager(path)
  manager.save(state, force=True)
  manager.wait()
  manager.close()
  return cfg


def test_training_workdir_loads_sharded(encoder, tokenizer_dir, tmp_path, gcs_emulator):
  import ml_collections
  from reasonir_jax import Encoder
  from reasonir_jax import sharding as shd
  workdir = str(tmp_path / "run")
  _training_workdir(encoder, tokenizer_dir, workdir)
  mesh = shd.make_mesh(ml_collections.ConfigDict({"shape": (1, 4, 2),
                                                  "axes": ("data", "fsdp", "tensor")}))
  loaded = Encoder.from_pretrained(workdir, dtype="float32", mesh=mesh, show_progress=False)
  emb = loaded.model.embed_tokens[...]  # ("vocab", "embed") -> ("tensor", "fsdp")
  assert len(emb.sharding.device_set) == 8
  assert emb.addressable_shards[0].data.shape == (512 // 2, 64 // 4)
  np.testing.assert_allclose(loaded.encode(TEXTS, max_length=64),
                             encoder.encode(TEXTS, max_length=64), atol=1e-5)
  # The same workdir in a bucket (Orbax's metadata read with gcsfs, its arrays with TensorStore's
  # gcs driver), restored in bf16 (the default) straight into the sharding.
  remote = f"{gcs_emulator.bucket()}/run"
  gcs_emulator.upload(workdir, remote)
  bf16 = Encoder.from_pretrained(remote, mesh=mesh, show_progress=False)
  assert bf16.model_cfg.param_dtype == "bfloat16"
  emb16 = bf16.model.embed_tokens[...]
  assert str(emb16.dtype) == "bfloat16" and emb16.sharding == emb.sharding
  np.testing.assert_array_equal(np.asarray(emb16),
                                np.asarray(emb).astype(emb16.dtype))


def test_remote_hf_dir_loads_sharded_and_exports(encoder, export_dir, gcs_emulator):
  import ml_collections
  from reasonir_jax import Encoder
  from reasonir_jax import paths
  from reasonir_jax import sharding as shd
  bucket = gcs_emulator.bucket()
  gcs_emulator.upload(export_dir, f"{bucket}/model")
  mesh = shd.make_mesh(ml_collections.ConfigDict({"shape": (1, 8, 1),
                                                  "axes": ("data", "fsdp", "tensor")}))
  remote = Encoder.from_pretrained(f"{bucket}/model", dtype="float32", mesh=mesh,
                                   show_progress=False)
  emb = remote.model.embed_tokens[...]
  assert emb.addressable_shards[0].data.shape == (512, 8)  # sharded on load, not on one host
  np.testing.assert_array_equal(np.asarray(emb), np.asarray(encoder.model.embed_tokens[...]))
  np.testing.assert_allclose(remote.encode(TEXTS, INSTRUCTION, max_length=64),
                             encoder.encode(TEXTS, INSTRUCTION, max_length=64), atol=1e-5)
  remote.save_pretrained(f"{bucket}/again", prompts={"biology": INSTRUCTION}, max_length=64)
  for name in ("config.json", "model.safetensors", "modules.json", "tokenizer.json",
               "config_sentence_transformers.json", "1_Pooling/config.json"):
    with paths.open(f"{bucket}/again/{name}", "rb") as f:
      assert f.read() == open(os.path.join(export_dir, name), "rb").read(), name


@pytest.mark.slow
def test_export_cli_from_and_to_a_bucket(encoder, tokenizer_dir, tmp_path, gcs_emulator):
  # `python -m reasonir_jax.export` as users run it, in its own process: a training workdir in
  # a bucket (Orbax through gcsfs and TensorStore's gcs driver) exported to the bucket (gcsfs),
  # then loaded back from there with the embeddings of the encoder that was saved.
  import subprocess
  import sys
  from reasonir_jax import Encoder
  from reasonir_jax import paths
  bucket = gcs_emulator.bucket()
  _training_workdir(encoder, tokenizer_dir, str(tmp_path / "run"))
  gcs_emulator.upload(tmp_path / "run", f"{bucket}/run")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "reasonir_jax.export", "--workdir", f"{bucket}/run",
                         "--out", f"{bucket}/export", "--prompt", f"biology={INSTRUCTION}",
                         "--max-length", "64"], env=env, cwd=tmp_path, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (tmp_path / "gs:").exists()  # nothing went to a local ./gs:/ folder
  for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
               "1_Pooling/config.json"):
    assert paths.exists(f"{bucket}/export/{name}"), name
  loaded = Encoder.from_pretrained(f"{bucket}/export", dtype="float32", show_progress=False)
  assert loaded.model_cfg == encoder.model_cfg
  for inst in (INSTRUCTION, None):
    np.testing.assert_allclose(loaded.encode(TEXTS, inst, max_length=64),
                               encoder.encode(TEXTS, inst, max_length=64), atol=1e-6)


@pytest.fixture(scope="module")
def qwen_src(tmp_path_factory, qwen_tokenizer_dir, qwen3_dir_factory):
  """A tiny Qwen3 checkpoint with the Qwen-like tokenizer (no BOS)."""
  return qwen3_dir_factory(str(tmp_path_factory.mktemp("qwen_src")), seed=7,
                           tokenizer_dir=qwen_tokenizer_dir)[1]


def _reference(path, recipe):
  """The PyTorch reference of a recipe on the transformers model at `path`."""
  import transformers
  from reasonir_jax.hf import torch_reference
  from reasonir_jax.tokenization import load_tokenizer
  model, tok = transformers.AutoModel.from_pretrained(path), load_tokenizer(path)
  if recipe == "reasonir":
    model = torch_reference.make_bidirectional(model)
    return lambda texts, inst, n: torch_reference.encode(model, tok, texts, inst, n).numpy()
  return lambda texts, inst, n: torch_reference.encode_last_token(model, tok, texts, inst, n).numpy()


@pytest.mark.parametrize("recipe", ["reasonir", "qwen3_embedding"])
def test_recipe_matches_pytorch_through_encoder_export_and_sentence_transformers(
    qwen_src, tmp_path, recipe):
  from sentence_transformers import SentenceTransformer
  from reasonir_jax import Encoder
  from reasonir_jax.model.config import RECIPES
  enc = Encoder.from_pretrained(qwen_src, dtype="float32", show_progress=False, recipe=recipe)
  cfg = enc.model_cfg
  assert dict(template=cfg.template, causal=cfg.causal, pooling=cfg.pooling) == RECIPES[recipe]
  reference = _reference(qwen_src, recipe)
  assert len(enc.prompt_tokenizer.full_ids([TEXTS[3]], None)[0]) > 64
  for inst in (INSTRUCTION, None):
    for max_length in (64, 40):  # 40 cuts the long texts (an appended EOS stays last)
      want = reference(TEXTS, inst, max_length)
      for packing in (True, False):
        got = enc.encode(TEXTS, inst, batch_size=2, max_length=max_length, packing=packing)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0,
                                   err_msg=f"{inst} {max_length} packing={packing}")

  out = enc.save_pretrained(str(tmp_path / "export"), prompts={"biology": INSTRUCTION},
                            max_length=64)
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["is_causal"] is cfg.causal and config["architectures"] == ["Qwen3Model"]
  pooling = json.load(open(os.path.join(out, "1_Pooling", "config.json")))
  assert pooling["pooling_mode_lasttoken"] is (recipe == "qwen3_embedding")
  queries, docs = enc.encode(TEXTS, INSTRUCTION, max_length=64), enc.encode(TEXTS, max_length=64)
  # Plain transformers on the export, with the reference recipe.
  exported = _reference(out, recipe)
  np.testing.assert_allclose(exported(TEXTS, INSTRUCTION, 64), queries, atol=1e-5, rtol=0)
  # sentence-transformers with no user code: prompts, pooling, the tokenizer's BOS/EOS.
  st = SentenceTransformer(out, device="cpu")
  np.testing.assert_allclose(st.encode(TEXTS, prompt_name="biology", batch_size=2), queries,
                             atol=1e-5, rtol=0)
  np.testing.assert_allclose(st.encode(TEXTS, batch_size=2), docs, atol=1e-5, rtol=0)
  # Our Encoder reads the recipe back from the export.
  again = Encoder.from_pretrained(out, dtype="float32", show_progress=False)
  assert again.model_cfg == cfg.replace(tie_word_embeddings=again.model_cfg.tie_word_embeddings)
  np.testing.assert_allclose(again.encode(TEXTS, INSTRUCTION, max_length=64), queries, atol=1e-6)
