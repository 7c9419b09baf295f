"""Loading configs: a config file path plus `a.b.c=value` overrides, with clear errors."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Iterable

import ml_collections

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ConfigError(ValueError):
  pass


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file. `tiny` is short for `configs/tiny.py`."""
  if not path.endswith(".py") and os.sep not in path:
    path = os.path.join(REPO_CONFIGS, f"{path}.py")
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config()")
  return module.get_config()


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(all_keys(value, name + "."))
    else:
      keys.append(name)
  return keys


def _parse_value(raw: str, current):
  if isinstance(current, str):
    return raw
  if isinstance(current, bool):
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"expected a boolean, got {raw!r}")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f"cannot parse {raw!r}: {e}") from None
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and not isinstance(value, tuple):
    value = (value,)
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(f"expected {type(current).__name__}, got {raw!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `key.path=value` strings; an unknown key lists the closest valid keys."""
  valid = all_keys(config)
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.removeprefix("--").removeprefix("config.")
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
      hint = f"; did you mean: {', '.join(close)}" if close else ""
      raise ConfigError(f"unknown config key {key!r}{hint}")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    try:
      node[leaf] = _parse_value(raw, node[leaf])
    except ConfigError as e:
      raise ConfigError(f"config key {key!r}: {e}") from None
  return config


def load_config(path: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  return apply_overrides(load_config_file(path), overrides)
