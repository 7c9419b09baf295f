"""Tokenization as the reference does it, on the real Llama-3 tokenizer (tests/conftest.py): the
ids of `BOS + prefix + text` tokenized as one string, the prefix count of the prefix alone,
GritLM's instruction stripping, truncation that keeps the prefix; and `Encoder.encode` equal to
the export in sentence-transformers on texts whose first characters merge with the prefix."""
import json
import os

import numpy as np
import pytest

INSTRUCTION = "Given a biology post, retrieve relevant passages that help answer the post"
# Texts whose first characters the Llama-3 tokenizer merges with (or splits from) the prefix's
# final newline, and plain ones.
TEXTS = ["\n\nfoo", " foo", "\tfoo", "\nThe cell divides.", "foo", "\n\n", "",
         "Plate tectonics explains earthquakes and volcanoes. " * 12]
BOS = 128000


@pytest.fixture(scope="module")
def llama3(llama3_tokenizer_dir):
  from reasonir_jax.tokenization import load_tokenizer
  return load_tokenizer(llama3_tokenizer_dir)


@pytest.fixture(scope="module")
def prompt_tok(llama3):
  from reasonir_jax.tokenization import PromptTokenizer
  return PromptTokenizer(llama3)


def test_fixture_is_llama3(llama3):
  assert len(llama3) == 128256 and llama3.bos_token_id == BOS and llama3.eos_token_id == 128001
  assert llama3.pad_token_id is None  # Llama-3.1 has none
  assert llama3("Hello world")["input_ids"] == [BOS, 9906, 1917]
  ids = {"<|finetune_right_pad_id|>": 128004, "<|reserved_special_token_2|>": 128005,
         "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
         "<|eot_id|>": 128009, "<|python_tag|>": 128010, "<|reserved_special_token_3|>": 128011,
         "<|reserved_special_token_247|>": 128255}
  assert llama3.convert_tokens_to_ids(list(ids)) == list(ids.values())
  # Special tokens in a text are single ids, as in Llama-3.1's tokenizer.json.
  assert llama3("<|eot_id|>x", add_special_tokens=False)["input_ids"] == [128009, 87]


def test_fixture_equals_metas_tiktoken_tokenizer(llama3):
  """Our conversion gives the ids of Meta's own (tiktoken) Llama-3 tokenizer."""
  pytest.importorskip("tiktoken")
  meta = pytest.importorskip("llama_models.llama3.tokenizer").Tokenizer.get_instance()
  texts = ["<|embed|>\n\n\nfoo", "<|user|>\nGiven a post\n<|embed|>\n\tfoo  bar\r\n",
           "Unicode: café, naïve, 東京, Ελληνικά 🙂 ∑∫√", "x = 12345678; y's  'LL", "\n" * 20,
           "   leading and trailing   ", "don't STOP 1.5e-3"]
  for text in texts:
    assert llama3(text)["input_ids"] == meta.encode(text, bos=True, eos=False), text


def test_text_and_prefix_tokenized_as_one_string(llama3, prompt_tok):
  from reasonir_jax.tokenization import prompt_prefix
  assert prompt_tok.adds_bos  # so BOS comes from the tokenizer, not from the string
  for instruction in (None, INSTRUCTION, " Given a post: \n"):
    prefix = prompt_prefix(instruction)
    encoded = prompt_tok.encode(TEXTS, instruction, max_length=512)
    for text, (ids, prefix_len) in zip(TEXTS, encoded):
      assert ids == llama3(prefix + text)["input_ids"], (instruction, text)
      assert ids.count(BOS) == 1 and ids[0] == BOS
      assert prefix_len == len(llama3(prefix)["input_ids"])  # BOS + prefix, alone
  # The case that tokenizing prefix and text apart gets wrong: "\n" + "\n\n" is one token.
  (ids, prefix_len), = prompt_tok.encode(["\n\nfoo"], None, 64)
  assert ids == [BOS, 27, 91, 12529, 91, 10586, 8134] and prefix_len == 6
  apart = list(prompt_tok.prefix_ids(None)) + llama3("\n\nfoo", add_special_tokens=False)["input_ids"]
  assert apart == [BOS, 27, 91, 12529, 91, 397, 271, 8134] != ids
  # The fast batch call gives the ids of the plain (offset-tracking) call.
  strings = [prompt_prefix(INSTRUCTION) + t for t in TEXTS]
  assert prompt_tok.full_ids(TEXTS, INSTRUCTION) == llama3(strings)["input_ids"]


def test_instruction_stripping_and_document_template(prompt_tok):
  from reasonir_jax.tokenization import clean_instruction, prompt_prefix
  assert clean_instruction(" Given a post: \n") == "Given a post"
  assert clean_instruction("\t:Given a post:") == "Given a post"
  assert clean_instruction(":\n ") is None and clean_instruction("") is None
  assert clean_instruction(None) is None
  assert prompt_prefix(":\n ") == prompt_prefix(None) == "<|embed|>\n"
  assert prompt_prefix(" Given a post: \n") == "<|user|>\nGiven a post\n<|embed|>\n"
  assert prompt_prefix("a: b") == "<|user|>\na: b\n<|embed|>\n"  # only the ends are stripped
  texts = ["\n\nfoo", "bar"]
  assert prompt_tok.encode(texts, ":\n ", 64) == prompt_tok.encode(texts, None, 64)
  assert (prompt_tok.encode(texts, " Given a post: \n", 64)
          == prompt_tok.encode(texts, "Given a post", 64))
  assert prompt_tok.prefix_ids(" \t") == prompt_tok.prefix_ids(None)
  # The export strips its prompts the same way, and refuses one that strips to nothing.
  from reasonir_jax.hf.sentence_transformers_files import prompts_for
  assert prompts_for({"q": " Given a post: \n"})["q"] == "<|user|>\nGiven a post\n<|embed|>\n"
  with pytest.raises(ValueError, match="export prompt 'q'.*not empty once stripped"):
    prompts_for({"q": ":\n "})


def test_truncation_keeps_the_prefix(llama3, prompt_tok):
  from reasonir_jax.tokenization import prompt_prefix
  text = TEXTS[-1]
  prefix_len = len(prompt_tok.prefix_ids(INSTRUCTION))
  full = llama3(prompt_prefix(INSTRUCTION) + text)["input_ids"]
  for max_length in (prefix_len + 1, prefix_len + 5, 64):
    (ids, n), = prompt_tok.encode([text], INSTRUCTION, max_length)
    assert ids == full[:max_length] and len(ids) == max_length and n == prefix_len
    assert tuple(ids[:n]) == prompt_tok.prefix_ids(INSTRUCTION)
  # The prefix alone reaching max_length: no room for text (the caller drops or raises).
  assert prompt_tok.encode([text, "x"], INSTRUCTION, prefix_len) == [None, None]
  # Texts are cut to 10 x max_length characters before tokenizing.
  (ids, _), = prompt_tok.encode(["ab " * 1000], None, 30)
  assert ids == llama3(prompt_prefix(None) + ("ab " * 1000)[:300])["input_ids"][:30]


def test_merged_texts_keep_padding_and_packing_invariants(prompt_tok):
  """A text can end up with no token to pool ("\n\n" merges into the prefix's last token):
  padding and packing (with a cut) still mask exactly the first prefix_len tokens."""
  from reasonir_jax.packing import cut_lengths, fit_to_rows, packed_arrays
  from reasonir_jax.tokenization import pad_batch
  enc = prompt_tok.encode(TEXTS, None, 40)
  lengths = [len(ids) for ids, _ in enc]
  assert [len(ids) - n for ids, n in enc][5:7] == [0, 0]  # "\n\n" and ""
  padded = pad_batch(enc, 40, prompt_tok.pad_id)
  assert padded["pool_mask"].sum(1).tolist() == [max(0, len(ids) - n) for ids, n in enc]
  mins = [n + 1 for _, n in enc]  # as the input pipeline asks: never cut into the prefix
  rows, cap = fit_to_rows(lengths, 40, 2, mins)
  kept = cut_lengths(lengths, cap, mins)
  assert cap is not None and all(min(n, m) <= k <= n for k, n, m in zip(kept, lengths, mins))
  packed = packed_arrays(enc, rows, 40, prompt_tok.pad_id, lengths=kept)
  pooled = [(packed["pool_ids"] == i).sum() for i in range(len(enc))]
  assert pooled == [max(0, k - n) for k, (_, n) in zip(kept, enc)]


def test_encode_equals_sentence_transformers_export(llama3, prompt_tok, hf_model_factory,
                                                    tmp_path):
  """A tiny random model over the real tokenizer's 128256 ids: `Encoder.encode` gives the
  export's sentence-transformers embeddings (include_prompt=False, the exported prompts), and
  those of the PyTorch reference."""
  import torch
  from sentence_transformers import SentenceTransformer
  from reasonir_jax import Encoder
  from reasonir_jax.hf.load import load_hf
  from reasonir_jax.hf.torch_reference import encode as torch_encode
  from reasonir_jax.tokenization import prompt_prefix
  hf_dir, export = str(tmp_path / "hf"), str(tmp_path / "export")
  model = hf_model_factory(seed=3, vocab_size=128256, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=8, bos_token_id=BOS, eos_token_id=128001,
                           pad_token_id=128004)
  model.save_pretrained(hf_dir)
  jax_model, cfg = load_hf(hf_dir, show_progress=False, param_dtype="float32", dtype="float32")
  encoder = Encoder(jax_model, prompt_tok, cfg)
  # An instruction given with GritLM's strippable ends exports the stripped prompt.
  encoder.save_pretrained(export, prompts={"biology": f" {INSTRUCTION}: \n"}, max_length=48)
  config = json.load(open(os.path.join(export, "config_sentence_transformers.json")))
  assert config["prompts"] == {"document": "<|embed|>\n", "biology": prompt_prefix(INSTRUCTION)}
  st = SentenceTransformer(export, device="cpu")
  texts = [t for t in TEXTS if t.strip()]  # each keeps a text token to pool
  for instruction, kw in ((INSTRUCTION, {"prompt_name": "biology"}), (None, {})):
    ours = encoder.encode(texts, instruction, batch_size=4, max_length=48)
    np.testing.assert_allclose(st.encode(texts, batch_size=4, **kw), ours, atol=1e-5)
    np.testing.assert_allclose(torch_encode(model, llama3, texts, instruction, max_length=48).numpy(),
                               ours, atol=1e-5)
    # Prefix and text tokenized apart give "\n\nfoo" another embedding: the test can tell.
    prefix = list(prompt_tok.prefix_ids(instruction))
    apart = prefix + llama3("\n\nfoo", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
      mean = model(input_ids=torch.tensor([apart])).last_hidden_state[0, len(prefix):].mean(0)
    assert np.abs(ours[0] - (mean / mean.norm()).numpy()).max() > 1e-3


def test_qwen3_embedding_template_ids(qwen_tokenizer_dir, tokenizer_dir):
  from reasonir_jax.tokenization import PromptTokenizer, load_tokenizer
  hf_tok = load_tokenizer(qwen_tokenizer_dir)
  tok = PromptTokenizer(hf_tok, "qwen3_embedding", "last_token")
  (ids, start), = tok.encode(["Binary search."], INSTRUCTION, 64)
  assert hf_tok.decode(ids) == f"Instruct: {INSTRUCTION}\nQuery:Binary search.<|endoftext|>"
  assert start == len(ids) - 1 and ids[-1] == 2048
  (doc, start), = tok.encode(["Binary search."], None, 64)
  assert hf_tok.decode(doc) == "Binary search.<|endoftext|>" and start == len(doc) - 1
  long = "Plate tectonics explains earthquakes, volcanoes and the drift of continents. " * 3
  full = tok.full_ids([long], None)[0]
  (cut, start), = tok.encode([long], None, 16)
  assert cut == full[:15] + [2048] and start == 15
  assert tok.cut((cut, start), 10) == (cut[:9] + [2048], 9)
  assert tok.reserved(INSTRUCTION) == len(tok.prefix_ids(INSTRUCTION)) + 1
  assert tok.encode(["x"], INSTRUCTION, tok.reserved(INSTRUCTION)) == [None]
  # ReasonIR's template on a tokenizer without BOS: none added, the prefix left out of the mean.
  plain = PromptTokenizer(hf_tok)
  (ids, prefix_len), = plain.encode(["Binary search."], INSTRUCTION, 64)
  from reasonir_jax.tokenization import prompt_prefix
  assert ids == hf_tok(prompt_prefix(INSTRUCTION) + "Binary search.")["input_ids"]
  assert prefix_len == len(hf_tok(prompt_prefix(INSTRUCTION))["input_ids"])
  with pytest.raises(ValueError, match="qwen3_embedding.*<\\|endoftext\\|>"):
    PromptTokenizer(tokenizer_dir, "qwen3_embedding", "last_token")
  with pytest.raises(ValueError, match="model.pooling='first'"):
    PromptTokenizer(hf_tok, "reasonir", "first")
