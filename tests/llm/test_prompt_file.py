"""`--prompt-file`: a TOML file of named fields checked against the stage's declaration."""
import pytest

from reasonir_jax.llm import prompt_file as pf

SPEC = pf.Spec("demo", {
    "system": pf.Field(default="Be brief."),
    "user": pf.Field(default="Q: {query}\nTask: {task}", allowed={"task"}, required={"query"}),
})


def _write(tmp_path, text):
  path = tmp_path / "p.toml"
  path.write_text(text)
  return str(path)


def test_no_file_keeps_our_wording():
  prompts = pf.load(SPEC, None)
  assert prompts.render("user", query="why?", task="biology") == "Q: why?\nTask: biology"
  assert prompts["system"] == "Be brief."


def test_a_file_replaces_only_the_fields_it_names(tmp_path):
  path = _write(tmp_path, 'user = """Question {{literal}}: {query}"""\n')
  prompts = pf.load(SPEC, path)
  assert prompts.render("user", query="why?") == "Question {literal}: why?"
  assert prompts["system"] == "Be brief."
  assert prompts.source == path


def test_fingerprint_follows_the_wording(tmp_path):
  ours = pf.load(SPEC, None).fingerprint
  assert pf.load(SPEC, _write(tmp_path, 'system = "Be brief."\n')).fingerprint == ours
  assert pf.load(SPEC, _write(tmp_path, 'system = "Be long."\n')).fingerprint != ours


@pytest.mark.parametrize("text, words", [
    ('usr = "x {query}"\n', ["unknown demo prompt field", "usr", "system", "user"]),
    ('user = 3\n', ["'user' must be a string", "int"]),
    ('user = "{query} {doc}"\n', ["'user'", "unknown placeholder", "doc", "query", "task"]),
    ('user = "no query here"\n', ["'user'", "lacks required placeholder", "query"]),
    ('user = "{query} {"\n', ["'user'", "literal braces"]),
    ('user = "{query.x}"\n', ["'user'", "not a plain name"]),
    ('user = \n', ["not a valid TOML"]),
])
def test_bad_files_name_the_file_and_field(tmp_path, text, words):
  path = _write(tmp_path, text)
  with pytest.raises(pf.PromptFileError) as e:
    pf.load(SPEC, path)
  assert path in str(e.value)
  for word in words:
    assert word in str(e.value)


def test_missing_file_names_the_flag(tmp_path):
  with pytest.raises(pf.PromptFileError, match="--prompt-file .*nope.toml"):
    pf.load(SPEC, str(tmp_path / "nope.toml"))
