"""The one set of LLM-backend flags, shared by data_gen and the evaluation (rewriting, reranking,
RAG): choose a backend (`openai`, `transformers`, `vllm`, `vllm-async`; see
`reasonir_jax.llm.backends`) and its settings.

Flags (with `prefix="rerank"`, each becomes `--rerank-...`, e.g. `--rerank-backend-model`):
  --backend KIND  --backend-model MODEL  --base-url URL  --api-key KEY
  openai:       --max-concurrency N  --request-timeout S  --max-retries N  --retry-backoff S
  vllm, vllm-async: --tensor-parallel-size N  --max-model-len N  --gpu-memory-utilization F
  vllm(-async)/transformers: --backend-dtype D;  transformers: --backend-device D
  any:          --no-structured-output  --backend-arg KEY=VALUE (repeatable, raw constructor args)
A flag left out keeps the backend's own default. Old spellings still work for one release, with
a warning: `--PREFIX-model` (now `--PREFIX-backend-model`) and, on data_gen's command line,
`--model`, `--dtype`, `--device`.
"""
from __future__ import annotations

import argparse
import ast
import sys

from reasonir_jax.llm.backends import BACKEND_KINDS, make_backend

_VLLM = ("vllm", "vllm-async")

# (flag without prefix, dest suffix, type, backend kwarg, kinds it applies to, help)
_SETTINGS = (
    ("api-key", "api_key", str, "api_key", ("openai",),
     "API key (default: the OPENAI_API_KEY environment variable)"),
    ("max-concurrency", "max_concurrency", int, "max_concurrency", ("openai",),
     "requests in flight (default 256)"),
    ("request-timeout", "request_timeout", float, "request_timeout_s", ("openai",),
     "seconds per request"),
    ("max-retries", "max_retries", int, "max_retries", ("openai",),
     "extra tries on timeouts, connection errors, 408, 409, 429 and 5xx (the openai client's)"),
    ("retry-backoff", "retry_backoff", float, "backoff_s", ("openai",),
     "first backoff in seconds (doubles per retry, capped at 60; a Retry-After header wins)"),
    ("tensor-parallel-size", "tensor_parallel_size", int, "tensor_parallel_size", _VLLM,
     "GPUs per model"),
    ("max-model-len", "max_model_len", int, "max_model_len", _VLLM,
     "context length; longer prompts are rejected before sending"),
    ("gpu-memory-utilization", "gpu_memory_utilization", float, "gpu_memory_utilization",
     _VLLM, "fraction of GPU memory vLLM may take"),
    ("backend-dtype", "backend_dtype", str, "dtype", (*_VLLM, "transformers"), "weight dtype"),
    ("backend-device", "backend_device", str, "device", ("transformers",),
     "cpu, cuda, ... (default: auto)"),
)


class _DeprecatedAlias(argparse.Action):
  """An old spelling: stores into the new flag's dest and says what to use instead."""

  def __init__(self, option_strings, dest, new_flag: str = "", **kwargs):
    self.new_flag = new_flag
    super().__init__(option_strings, dest, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    print(f"warning: {option_string} is deprecated and will be removed; use {self.new_flag}",
          file=sys.stderr)
    setattr(namespace, self.dest, values)


def _has(parser: argparse.ArgumentParser, flag: str) -> bool:
  return flag in parser._option_string_actions  # noqa: SLF001 - argparse has no public check


def _alias(parser, old: str, new: str, dest: str, type_=str) -> None:
  if not _has(parser, old):
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new_flag=new, type=type_,
                        help=argparse.SUPPRESS)


def add_backend_flags(parser: argparse.ArgumentParser, prefix: str = "", required: bool = False,
                      what: str = "the LLM", default: str | None = None,
                      legacy_aliases: tuple[str, ...] = ()) -> None:
  """Adds the backend flags (see the module docstring), under `--<prefix>-` when given.
  `legacy_aliases` names extra old spellings this command line used to have, among "model",
  "dtype", "device" (data_gen's), added as deprecated aliases when they are free."""
  f = f"--{prefix}-" if prefix else "--"
  d = f"{prefix.replace('-', '_')}_" if prefix else ""
  group = parser.add_argument_group(f"LLM backend ({what})")
  group.add_argument(f"{f}backend", dest=f"{d}backend", choices=BACKEND_KINDS,
                     required=required, default=default,
                     help=f"LLM backend kind for {what}" +
                     (f" (default {default})" if default else ""))
  group.add_argument(f"{f}backend-model", dest=f"{d}backend_model", default="",
                     help=f"model of {what}: served name (openai) or local path/name")
  if prefix:
    _alias(parser, f"{f}model", f"{f}backend-model", f"{d}backend_model")
  if not _has(parser, f"{f}base-url"):
    group.add_argument(f"{f}base-url", dest=f"{d}base_url", default="",
                       help=f"OpenAI-compatible endpoint of {what}, e.g. http://host:8000/v1" +
                       (" (default: --base-url)" if prefix else ""))
  for flag, dest, type_, _, kinds, help_ in _SETTINGS:
    group.add_argument(f"{f}{flag}", dest=f"{d}{dest}", type=type_, default=None,
                       help=f"{'/'.join(kinds)}: {help_}")
  group.add_argument(f"{f}no-structured-output", dest=f"{d}no_structured_output",
                     action="store_true",
                     help="do not ask the backend for schema-constrained JSON")
  group.add_argument(f"{f}backend-arg", dest=f"{d}backend_arg", action="append", default=[],
                     metavar="KEY=VALUE",
                     help="extra backend constructor argument (repeatable), e.g. "
                     "max_concurrency=32")
  olds = {"model": ("backend-model", "backend_model", str),
          "dtype": ("backend-dtype", "backend_dtype", str),
          "device": ("backend-device", "backend_device", str)}
  for name in legacy_aliases:
    new, dest, type_ = olds[name]
    _alias(parser, f"{f}{name}", f"{f}{new}", f"{d}{dest}", type_)


def add_base_url_flag(parser: argparse.ArgumentParser) -> None:
  """The shared `--base-url` that prefixed backends fall back to (a no-op if present)."""
  if not _has(parser, "--base-url"):
    parser.add_argument("--base-url", default="",
                        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")


def backend_kwargs(args: argparse.Namespace, prefix: str = "") -> dict | None:
  """The make_backend kwargs chosen on the command line (with "kind"), or None when no backend
  was asked for. Only the settings given, and only those that apply to the kind, are passed."""
  d = f"{prefix.replace('-', '_')}_" if prefix else ""
  f = f"--{prefix}-" if prefix else "--"
  kind = getattr(args, f"{d}backend")
  if not kind:
    return None
  kwargs = {"model": getattr(args, f"{d}backend_model")}
  if not kwargs["model"]:
    raise ValueError(f"{f}backend-model is required with {f}backend {kind}")
  base_url = getattr(args, f"{d}base_url", "") or getattr(args, "base_url", "")
  if kind == "openai":
    if not base_url:
      alt = f" (or {f}base-url)" if prefix else ""
      raise ValueError(f"{f}backend openai needs --base-url{alt} (e.g. http://localhost:8000/v1)")
    kwargs["base_url"] = base_url
  for _, dest, _, kwarg, kinds, _ in _SETTINGS:
    value = getattr(args, f"{d}{dest}", None)
    if value is not None and kind in kinds:
      kwargs[kwarg] = value
  if getattr(args, f"{d}no_structured_output", False) and kind in ("openai", *_VLLM):
    kwargs["structured_output"] = False
  for item in getattr(args, f"{d}backend_arg"):
    if "=" not in item:
      raise ValueError(f"{f}backend-arg {item!r} is not KEY=VALUE")
    key, raw = item.split("=", 1)
    try:
      kwargs[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      kwargs[key] = raw
  return {"kind": kind, **kwargs}


def make_backend_from_args(args: argparse.Namespace, prefix: str = "", **extra):
  """The backend chosen on the command line (None when none was asked for); `extra` kwargs
  (e.g. a vLLM seed) are added where the flags did not set them."""
  kwargs = backend_kwargs(args, prefix)
  if kwargs is None:
    return None
  kind = kwargs.pop("kind")
  return make_backend(kind, **{**extra, **kwargs})
