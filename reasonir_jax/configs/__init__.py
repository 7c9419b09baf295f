"""The configs (`base.py`, `tiny.py`, `llama3_8b.py`, `qwen3_8b.py`, `qwen3_embedding_8b.py`) and
their loader: `--config` and its `--config.a.b=value` overrides, parsed by
`ml_collections.config_flags`, with clear errors.

  config = load_config("tiny", ["optim.lr=1e-5"])
  overrides, rest = split_config_args(sys.argv[1:])   # entry points: the rest is theirs
  config = parse_config_flags(args.config, overrides)

`--config` takes a config file's path or the name of one of the configs here (`tiny` is short
for `reasonir_jax/configs/tiny.py`). An override of a key the config lacks names the closest
valid keys; a value is parsed by the type of the key's current value (booleans also take
yes/no; a tuple takes `(2,-1,1)` or one bare element).
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Iterable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

CONFIGS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_CONFIGS = CONFIGS_DIR  # the former name, kept for one release

_OVERRIDE = re.compile(r"^--?config\.")


class ConfigError(ValueError):
  pass


class _BooleanParser(flags.BooleanParser):
  """absl's booleans (true/false/t/f/1/0) plus yes/no, which `--config.x=yes` always took."""

  def parse(self, argument):
    if isinstance(argument, str) and argument.lower() in ("yes", "no"):
      return argument.lower() == "yes"
    return super().parse(argument)


config_flags.register_flag_parser_for_type(bool, _BooleanParser())


def config_path(path: str) -> str:
  """`tiny` -> this folder's tiny.py; anything else is a file path."""
  if not path.endswith(".py") and os.sep not in path:
    return os.path.join(CONFIGS_DIR, f"{path}.py")
  return path


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(all_keys(value, name + "."))
    else:
      keys.append(name)
  return keys


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file (no overrides)."""
  return parse_config_flags(path, ())


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the `--config.a.b=v` overrides, every other argument), in order."""
  overrides = [a for a in argv if _OVERRIDE.match(a)]
  return overrides, [a for a in argv if not _OVERRIDE.match(a)]


def parse_config_flags(path: str, override_args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config of file `path` with `--config.a.b=value` arguments applied, parsed by
  `config_flags.DEFINE_config_file` on a flag set of its own (so several loads in one process,
  tests and tools, do not meet in absl's global flags)."""
  path = config_path(path)
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  for arg in override_args:
    if "=" not in arg:
      raise ConfigError(f"override {arg!r} is not of the form key.path=value")
  # The last value of a key wins, as for any flag: config_flags would append a repeated
  # tuple override (mesh.shape twice -> six entries) instead.
  last = {_OVERRIDE.sub("", arg).split("=", 1)[0]: i for i, arg in enumerate(override_args)}
  override_args = [override_args[i] for i in sorted(last.values())]
  # The file first: config_flags refuses overrides given before it.
  argv = ["reasonir_jax", f"--config={path}", *override_args]
  holder = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=holder,
                                  lock_config=False, sys_argv=argv)
  try:
    holder(argv)
    config = holder.config
  except Exception as e:  # noqa: BLE001 - any failure is reported against the key it concerns
    raise _explain(path, override_args, e) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config() returned {type(config).__name__}, "
                      "not a ConfigDict")
  return config


def _explain(path: str, override_args: Sequence[str], error: Exception) -> ConfigError:
  """The error as our users know it: the unknown key and its closest valid keys, or the key
  whose value did not parse."""
  text = str(error)
  if "get_config" in text or "Error whilst parsing config file" in text:
    return ConfigError(f"config file {path} has no usable get_config(): {text}")
  valid = all_keys(parse_config_flags(path, ()))
  for arg in override_args:
    key = _OVERRIDE.sub("", arg).split("=", 1)[0]
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
      hint = f"; did you mean: {', '.join(close)}" if close else ""
      return ConfigError(f"unknown config key {key!r}{hint}")
  bad = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", text, re.S)
  if bad:
    return ConfigError(f"config key {bad.group(1)!r}: cannot use {bad.group(2)!r}: {bad.group(3)}")
  return ConfigError(text)


def load_config(path: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """`path` (or a config's name) with `a.b.c=value` overrides (a `--config.` prefix is fine)."""
  return parse_config_flags(path, ["--config." + item.removeprefix("--").removeprefix("config.")
                                   for item in overrides])
