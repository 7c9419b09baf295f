"""The library never imports the application: nothing under `reasonir_jax/` imports `data_gen`,
and `reasonir_jax.llm` with every backend module imports with `data_gen` unimportable."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

import reasonir_jax
from reasonir_jax.llm import backends

LIBRARY = pathlib.Path(reasonir_jax.__file__).parent


def _imported_modules(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module


def test_no_library_module_imports_data_gen():
  files = sorted(LIBRARY.rglob("*.py"))
  assert len(files) > 20  # the walk found the library
  offenders = [f"{path.relative_to(LIBRARY.parent)}: {name}"
               for path in files
               for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
               if name == "data_gen" or name.startswith("data_gen.")]
  assert offenders == []


def test_the_walk_sees_an_import_inside_a_function():
  tree = ast.parse("def f():\n  from data_gen.backends import make_backend\n")
  assert list(_imported_modules(tree)) == ["data_gen.backends"]


def test_llm_package_and_every_backend_import_without_data_gen():
  modules = ["reasonir_jax.llm", "reasonir_jax.llm.types", "reasonir_jax.llm.flags",
             "reasonir_jax.llm.cache", "reasonir_jax.llm.meter", "reasonir_jax.llm.prompt_file",
             "reasonir_jax.eval.rerank", "reasonir_jax.eval.rewrite", "reasonir_jax.eval.rag",
             *(f"reasonir_jax.llm.backends.{module}" for module, _ in backends._REGISTRY.values())]
  code = ("import importlib, sys\n"
          "sys.modules['data_gen'] = None  # any import of data_gen now raises ImportError\n"
          f"for name in {modules!r}:\n"
          "  importlib.import_module(name)\n"
          "print('ok')\n")
  env = {**os.environ, "PYTHONPATH": str(LIBRARY.parent)}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "ok"


def test_backend_registry_names_every_kind_and_rejects_others():
  assert backends.BACKEND_KINDS == ("openai", "transformers", "vllm", "vllm-async")
  assert backends.backend_class("openai").__name__ == "OpenAIBackend"
  with pytest.raises(ValueError, match="'gpt'.*vllm-async"):
    backends.backend_class("gpt")


def test_old_data_gen_backends_names_still_import():
  # Kept for one release: the old module names are the new modules.
  from data_gen import backends as old
  from data_gen.backends import base, hf_local, openai_http, vllm_async, vllm_offline
  from reasonir_jax.llm import types
  from reasonir_jax.llm.backends import openai, transformers
  assert old.make_backend is backends.make_backend and old.ChatFailure is types.ChatFailure
  assert base.SamplingParams is types.SamplingParams and base.cut_at_stop is types.cut_at_stop
  assert openai_http is openai and hf_local is transformers
  assert vllm_offline.VLLMBackend is backends.backend_class("vllm")
  assert vllm_async.AsyncVLLMBackend is backends.backend_class("vllm-async")
