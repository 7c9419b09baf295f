"""User-supplied prompt wording for every LLM stage (`--prompt-file`).

Our prompts are written in our own words. A user who holds another wording (the public ReasonIR
or BRIGHT prompts, say) passes it as a TOML file of named string fields:

    # rewrite.toml: every field is optional; a missing one keeps our wording
    system = "You are a helpful assistant."
    user = '''{instruction}.
    Query: {query}
    ...'''

Each stage declares its fields and, per field, the `{placeholders}` it fills in (`{{`/`}}` for
literal braces). Loading checks the file against that declaration: an unknown field, a field
that is not a string, an unknown placeholder, or a missing required placeholder is an error that
names the file and the field. `Prompts.fingerprint` hashes the wording in force, so answer
caches keyed on it never mix two wordings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import string
import tomllib
from typing import Mapping

from reasonir_jax import paths


class PromptFileError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Field:
  """One prompt field: the placeholders it may use and those it must use."""
  default: str
  allowed: frozenset[str] = frozenset()
  required: frozenset[str] = frozenset()

  def __post_init__(self):
    object.__setattr__(self, "allowed", frozenset(self.allowed) | frozenset(self.required))
    object.__setattr__(self, "required", frozenset(self.required))


@dataclasses.dataclass(frozen=True)
class Spec:
  """The prompt fields of one stage (e.g. "rewrite"), with our wording as defaults."""
  stage: str
  fields: Mapping[str, Field]

  def defaults(self) -> "Prompts":
    return Prompts(self.stage, {k: f.default for k, f in self.fields.items()}, source="built-in")


def placeholders(template: str) -> set[str]:
  """The `{name}` placeholders of a str.format template (raises ValueError on a bad brace)."""
  names = set()
  for _, name, _, _ in string.Formatter().parse(template):
    if name is not None:
      if not name.isidentifier():
        raise ValueError(f"placeholder {{{name}}} is not a plain name")
      names.add(name)
  return names


def check_template(spec: Spec, key: str, template: str, source: str) -> None:
  field = spec.fields[key]
  where = f"{source}: {spec.stage} prompt field {key!r}"
  try:
    used = placeholders(template)
  except ValueError as e:
    raise PromptFileError(f"{where}: {e} (write {{{{ and }}}} for literal braces)") from None
  unknown = used - field.allowed
  if unknown:
    raise PromptFileError(f"{where} uses unknown placeholder(s) {sorted(unknown)}; "
                          f"this field may use {sorted(field.allowed)}")
  missing = field.required - used
  if missing:
    raise PromptFileError(f"{where} lacks required placeholder(s) {sorted(missing)}")


@dataclasses.dataclass(frozen=True)
class Prompts:
  """The wording in force for one stage: field name -> template."""
  stage: str
  templates: Mapping[str, str]
  source: str

  def __getitem__(self, key: str) -> str:
    return self.templates[key]

  def render(self, key: str, **values) -> str:
    return self.templates[key].format(**values)

  @property
  def fingerprint(self) -> str:
    blob = json.dumps({"stage": self.stage, "templates": dict(sorted(self.templates.items()))},
                      ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def parse(spec: Spec, text: str, source: str) -> Prompts:
  try:
    data = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise PromptFileError(f"{source}: not a valid TOML prompt file: {e}") from None
  unknown = set(data) - set(spec.fields)
  if unknown:
    raise PromptFileError(f"{source}: unknown {spec.stage} prompt field(s) {sorted(unknown)}; "
                          f"the fields are {sorted(spec.fields)}")
  templates = {k: f.default for k, f in spec.fields.items()}
  for key, value in data.items():
    if not isinstance(value, str):
      raise PromptFileError(f"{source}: {spec.stage} prompt field {key!r} must be a string, "
                            f"got {type(value).__name__}")
    check_template(spec, key, value, source)
    templates[key] = value
  return Prompts(spec.stage, templates, source=source)


def load(spec: Spec, path: str | None) -> Prompts:
  """The stage's prompts: our wording, with the fields of `path` (a TOML file) in its place."""
  if not path:
    return spec.defaults()
  try:
    text = paths.read_text(path)
  except OSError as e:
    raise PromptFileError(f"--prompt-file {path}: cannot read it: {e}") from None
  return parse(spec, text, source=path)


def add_flag(parser, stage: str) -> None:
  """Adds `--prompt-file` to an argparse parser."""
  parser.add_argument(
      "--prompt-file", default=None,
      help=f"TOML file of {stage} prompt fields replacing our wording (see docs/prompt_files.md)")
