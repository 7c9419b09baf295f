"""Command-line flags for choosing a data_gen LLM backend (rewriting, reranking, RAG)."""
from __future__ import annotations

import argparse
import ast

BACKEND_KINDS = ("openai", "transformers", "vllm")


def add_backend_flags(parser: argparse.ArgumentParser, prefix: str = "", required: bool = False,
                      what: str = "the LLM") -> None:
  """--backend/--backend-model/--base-url/--backend-arg, or --<prefix>-backend/-model/... ."""
  p = f"{prefix}-" if prefix else ""
  parser.add_argument(f"--{p}backend", choices=BACKEND_KINDS, required=required,
                      help=f"data_gen backend kind for {what}")
  parser.add_argument(f"--{p}model" if prefix else "--backend-model",
                      dest=f"{p.replace('-', '_')}backend_model", default="",
                      help=f"model of {what}: served name (openai) or local path/name")
  if prefix:
    parser.add_argument(f"--{p}base-url", default="",
                        help=f"OpenAI-compatible endpoint of {what} (default: --base-url)")
  parser.add_argument(f"--{p}backend-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="extra backend constructor argument (repeatable), e.g. max_concurrency=32")


def add_base_url_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--base-url", default="",
                      help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")


def backend_kwargs(args: argparse.Namespace, prefix: str = "") -> dict | None:
  """The make_backend kwargs chosen on the command line, or None when no backend was asked for."""
  p = f"{prefix}_" if prefix else ""
  kind = getattr(args, f"{p}backend")
  if not kind:
    return None
  flag = f"--{prefix}-" if prefix else "--"
  kwargs = {"model": getattr(args, f"{p}backend_model")}
  if not kwargs["model"]:
    raise ValueError(f"{flag}{'model' if prefix else 'backend-model'} is required with {flag}backend {kind}")
  base_url = getattr(args, f"{p}base_url", "") or getattr(args, "base_url", "")
  if kind == "openai":
    if not base_url:
      raise ValueError(f"{flag}backend openai needs --base-url (e.g. http://localhost:8000/v1)")
    kwargs["base_url"] = base_url
  for item in getattr(args, f"{p}backend_arg"):
    if "=" not in item:
      raise ValueError(f"{flag}backend-arg {item!r} is not KEY=VALUE")
    key, raw = item.split("=", 1)
    try:
      kwargs[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      kwargs[key] = raw
  return {"kind": kind, **kwargs}


def make_backend_from_args(args: argparse.Namespace, prefix: str = ""):
  kwargs = backend_kwargs(args, prefix)
  if kwargs is None:
    return None
  from data_gen.backends import make_backend
  return make_backend(kwargs.pop("kind"), **kwargs)
