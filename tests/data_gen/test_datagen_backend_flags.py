"""The one backend flag set (reasonir_jax.llm.flags) on data_gen's command line and with a prefix,
with the old spellings as deprecated aliases."""
import argparse

import pytest

from data_gen.cli import build_parser
from reasonir_jax.llm import flags as llm


def test_data_gen_uses_the_shared_flags_and_keeps_old_spellings(capsys):
  args = build_parser().parse_args(
      ["hq", "--input", "x", "--output-dir", "o", "--backend", "openai", "--backend-model", "m",
       "--base-url", "http://h/v1", "--max-concurrency", "512", "--retry-backoff", "0.5",
       "--tensor-parallel-size", "8", "--no-structured-output"])
  assert llm.backend_kwargs(args) == {"kind": "openai", "model": "m", "base_url": "http://h/v1",
                                      "max_concurrency": 512, "backoff_s": 0.5,
                                      "structured_output": False}  # vllm-only flag dropped
  old = build_parser().parse_args(["hq", "--input", "x", "--output-dir", "o", "--model", "big",
                                   "--dtype", "bfloat16", "--tensor-parallel-size", "8"])
  assert "--model is deprecated" in capsys.readouterr().err
  assert llm.backend_kwargs(old) == {"kind": "vllm", "model": "big", "dtype": "bfloat16",
                                     "tensor_parallel_size": 8}


def test_prefixed_flags_fall_back_to_the_shared_base_url_and_name_the_flag(capsys):
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="retriever")  # the evaluation's own --model stays free
  llm.add_backend_flags(parser, prefix="rerank")
  llm.add_base_url_flag(parser)
  llm.add_base_url_flag(parser)  # idempotent
  args = parser.parse_args(["--rerank-backend", "openai", "--rerank-model", "q",
                            "--base-url", "http://h/v1", "--rerank-max-retries", "0",
                            "--rerank-backend-arg", "max_concurrency=3"])
  assert "--rerank-model is deprecated" in capsys.readouterr().err
  assert args.model == "retriever"
  assert llm.backend_kwargs(args, "rerank") == {"kind": "openai", "model": "q",
                                                "base_url": "http://h/v1", "max_retries": 0,
                                                "max_concurrency": 3}
  with pytest.raises(ValueError, match="--rerank-backend-model is required"):
    llm.backend_kwargs(parser.parse_args(["--rerank-backend", "vllm"]), "rerank")
  assert llm.backend_kwargs(parser.parse_args([]), "rerank") is None
