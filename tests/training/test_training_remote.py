"""gs:// end to end on a GCS emulator (fake-gcs-server, tests/conftest.py), through the clients
users run: gcsfs for our paths and epath, google-cloud-storage for Orbax's bucket checks,
TensorStore's gcs driver for Orbax's arrays. Train 6 steps from data there, checkpoint there,
resume from there past step 7 (where a run once hung on its TensorBoard upload) to step 8,
bitwise equal to a local run, with every TensorBoard scalar readable there; export from there;
bad buckets, globs and workdirs (and a tokenizer larger than the embedding) fail naming the path
or flag; gs:// goes through gcsfs even where TensorFlow is importable."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from reasonir_jax import paths

RUN = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "checkpoint.every_steps=3", "train.log_every=1",
       "data.max_length=48", "data.query_max_length=48", "data.passage_max_length=48",
       "data.bucket_lengths=(48,)"]


@pytest.fixture
def bucket(gcs_emulator, tmp_path, monkeypatch):
  monkeypatch.setenv("REASONIR_STAGE_DIR", str(tmp_path / "stage"))
  return gcs_emulator.bucket()


def read_scalars(logdir, tag):
  """{step: value} of `tag` over every event object under `logdir`, in name order."""
  from reasonir_jax.data.tfrecord import iter_records
  from tensorboardX.proto import event_pb2
  out = {}
  for name in paths.listdir(logdir):
    assert "tfevents" in name, name
    for _, data in iter_records(paths.join(logdir, name)):  # checks both CRCs of every record
      event = event_pb2.Event.FromString(data)
      for value in event.summary.value:
        if value.tag == tag:
          assert event.step not in out, (tag, event.step)  # no record uploaded twice
          out[event.step] = value.simple_value
  return out


def _upload_sample(prefix):
  from reasonir_jax.data.sample import default_sample_tfrecords
  for local in paths.glob(default_sample_tfrecords()):
    with open(local, "rb") as src, paths.open(f"{prefix}/{os.path.basename(local)}", "wb") as dst:
      dst.write(src.read())
  return f"{prefix}/*.tfrecord"


@pytest.mark.timeout(400)
def test_train_checkpoint_resume_export_on_a_bucket(bucket, make_tiny_config, tmp_path, capsys,
                                                     monkeypatch):
  from reasonir_jax import export, train
  from reasonir_jax.data.sample import default_sample_tfrecords
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training import tensorboard_remote
  from safetensors.numpy import load_file

  # An upload at every flush: each logged step's event file part, from the training thread and
  # from tensorboardX's event thread, is a new object.
  monkeypatch.setattr(tensorboard_remote, "UPLOAD_SECS", 0.0)
  sources = f"remote={_upload_sample(f'{bucket}/data')}"
  workdir = f"{bucket}/runs/one"
  train.run(make_tiny_config(*RUN, "train.num_steps=6", f"data.sources={sources}"), workdir)
  assert paths.exists(f"{workdir}/checkpoints/6/commit_success.txt")
  assert paths.exists(f"{workdir}/data_state/6/process_0-of-1.json")
  assert not os.path.exists("gs:")  # nothing landed in a local ./gs:/ folder
  assert sorted(os.listdir(tmp_path / "stage"))  # the process's files were staged locally

  resumed = train.run(make_tiny_config(*RUN, "train.num_steps=8", f"data.sources={sources}"), workdir)
  out = capsys.readouterr().out
  assert "from step 6" in out and "step 7 " in out and "step 8 " in out
  assert "step 1 " in out.split("from step 6")[0]
  assert ckpt_lib.CheckpointManager(workdir).all_steps() == [6, 8]  # checkpoint.keep=2
  loss = read_scalars(f"{workdir}/tensorboard", "train/loss")
  assert sorted(loss) == list(range(1, 9)) and all(np.isfinite(list(loss.values())))
  local = train.run(make_tiny_config(*RUN, "train.num_steps=8",
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
  with pytest.raises(FileNotFoundError, match=f"no files match '{bucket}/none-\\*\\.tfrecord'"):
    expand_paths(f"{bucket}/none-*.tfrecord")
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
  with pytest.raises(FileNotFoundError, match=f"{bucket}/none-\\*"):
    train.run(make_tiny_config(*RUN, f"data.sources=a={bucket}/none-*.tfrecord"),
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


def test_gs_goes_through_gcsfs_even_with_tensorflow_importable(tmp_path):
  """etils.epath (Orbax's paths) picks TensorFlow's GCS filesystem for gs:// whenever a
  `tensorflow` module can be found; importing reasonir_jax sets EPATH_USE_TF=false first, so epath
  uses fsspec/gcsfs like our own paths, unless the user chose otherwise."""
  (tmp_path / "tensorflow").mkdir()  # found by importlib, never imported
  (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('not a real TensorFlow')\n")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), repo])

  def backend(imports, **extra):
    code = (f"{imports}\nimport os\nfrom etils import epath\nfrom etils.epath import backend\n"
            "b = epath.Path('gs://bkt/x')._backend\n"
            "print(os.environ.get('EPATH_USE_TF'), {backend.fsspec_backend: 'fsspec', "
            "backend.tf_backend: 'tf'}.get(b, b))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, **extra), capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.split()

  assert backend("") == ["None", "tf"]  # the case: TensorFlow found, nothing chosen
  assert backend("import reasonir_jax") == ["false", "fsspec"]
  assert backend("import reasonir_jax", EPATH_USE_TF="true") == ["true", "tf"]
