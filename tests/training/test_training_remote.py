"""gs:// end to end, offline: training data, workdir, Orbax checkpoints, TensorBoard and export
all on a fake bucket (tests/fake_bucket.py for fsspec/epath, tests/fake_gcs_server.py for
TensorStore's gcs driver, both over one local folder). Train 3 steps from data there,
checkpoint there, resume from there to step 5 (bitwise equal to a local run), export from
there; bad buckets, globs and workdirs (and a tokenizer larger than the embedding) fail naming
the path or flag."""
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fake_bucket  # noqa: E402
import fake_gcs_server  # noqa: E402

from reasonir_jax import paths  # noqa: E402

RUN = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "checkpoint.every_steps=100", "train.log_every=1",
       "data.max_length=48", "data.query_max_length=48", "data.passage_max_length=48",
       "data.bucket_lengths=(48,)"]


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root = tmp_path / "gcs"
  (root / "bkt").mkdir(parents=True)
  fake_bucket.install(str(root))
  server, env = fake_gcs_server.start(root)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("REASONIR_STAGE_DIR", str(tmp_path / "stage"))
  yield root
  server.shutdown()


def _upload_sample(prefix):
  from reasonir_jax.data.sample import default_sample_tfrecords
  for local in paths.glob(default_sample_tfrecords()):
    with open(local, "rb") as src, paths.open(f"{prefix}/{os.path.basename(local)}", "wb") as dst:
      dst.write(src.read())
  return f"{prefix}/*.tfrecord"


def test_train_checkpoint_resume_export_on_a_bucket(bucket, make_tiny_config, tmp_path, capsys):
  from reasonir_jax import export, train
  from reasonir_jax.data.sample import default_sample_tfrecords
  from reasonir_jax.training import checkpoint as ckpt_lib
  from safetensors.numpy import load_file

  sources = f"remote={_upload_sample('gs://bkt/data')}"
  workdir = "gs://bkt/runs/one"
  train.run(make_tiny_config(*RUN, "train.num_steps=3", f"data.sources={sources}"), workdir)
  assert (bucket / "bkt/runs/one/checkpoints/3/commit_success.txt").exists()
  assert (bucket / "bkt/runs/one/data_state/3/process_0-of-1.json").exists()
  assert not os.path.exists("gs:")  # nothing landed in a local ./gs:/ folder
  assert any(n.startswith("events.out.tfevents") for n in paths.listdir(f"{workdir}/tensorboard"))
  assert sorted(os.listdir(tmp_path / "stage"))  # the process's files were staged locally

  resumed = train.run(make_tiny_config(*RUN, "train.num_steps=5", f"data.sources={sources}"), workdir)
  out = capsys.readouterr().out
  assert "from step 3" in out and "step 4 " in out and "step 1 " in out.split("from step 3")[0]
  assert ckpt_lib.CheckpointManager(workdir).all_steps() == [3, 5]
  local = train.run(make_tiny_config(*RUN, "train.num_steps=5",
                                     f"data.sources=remote={default_sample_tfrecords()}"),
                    str(tmp_path / "local"))
  for got, want in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(local.params)):
    assert np.isfinite(np.asarray(want)).all()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

  export.main(["--workdir", workdir, "--out", str(tmp_path / "hf")])
  tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
  np.testing.assert_array_equal(tensors["embed_tokens.weight"],
                                np.asarray(resumed.params["embed_tokens"][...]))


def test_bad_buckets_globs_and_workdirs_name_the_path(bucket, make_tiny_config, tmp_path):
  from reasonir_jax import train
  from reasonir_jax.data.reader import expand_paths
  with pytest.raises(FileNotFoundError, match=r"no files match 'gs://bkt/none-\*\.tfrecord'"):
    expand_paths("gs://bkt/none-*.tfrecord")
  with pytest.raises(paths.PathError, match=r"cannot list 'gs://missing-bucket/a-\*'"):
    expand_paths("gs://missing-bucket/a-*")
  with pytest.raises(paths.PathError, match=r"workdir 'gs://missing-bucket/run' is not writable"):
    train.run(make_tiny_config(*RUN), "gs://missing-bucket/run")
  blocker = tmp_path / "file"
  blocker.write_text("x")  # a workdir below a regular file cannot be created, even as root
  with pytest.raises(paths.PathError, match=f"workdir '{blocker}/run' is not writable"):
    paths.check_writable(blocker / "run")
  with pytest.raises(ValueError, match="has 2048 tokens but config.model.vocab_size=256"):
    train.run(make_tiny_config(*RUN, "model.vocab_size=256"), str(tmp_path / "v"))
  with pytest.raises(FileNotFoundError, match=r"gs://bkt/none-\*"):
    train.run(make_tiny_config(*RUN, "data.sources=a=gs://bkt/none-*.tfrecord"),
              str(tmp_path / "w"))


def test_paths_on_an_fsspec_memory_filesystem():
  base = "memory://reasonir-paths-test"
  paths.write_text(f"{base}/a/x-1.txt", "one")
  with paths.open(f"{base}/a/x-0.txt", "wb") as f:
    f.write(b"zero")
  assert paths.glob(f"{base}/a/x-*.txt") == [f"memory:///reasonir-paths-test/a/x-{i}.txt" for i in (0, 1)]
  assert paths.read_text(f"{base}/a/x-1.txt") == "one" and paths.getsize(f"{base}/a/x-0.txt") == 4
  assert paths.isfile(f"{base}/a/x-0.txt") and paths.isdir(f"{base}/a") and paths.is_remote(base)
  assert paths.absolute(base) == base and paths.join(base, "a", "b") == f"{base}/a/b"
  assert not paths.is_remote("file:///tmp/x") and paths.absolute("rel") == os.path.abspath("rel")
  paths.check_writable(f"{base}/run")
  paths.rmtree(f"{base}/a")
  assert not paths.exists(f"{base}/a/x-0.txt")
