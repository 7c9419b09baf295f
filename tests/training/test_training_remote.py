"""gs:// end to end on a GCS emulator (fake-gcs-server, tests/conftest.py), through the clients
users run: gcsfs for our paths and epath, google-cloud-storage for Orbax's bucket checks,
TensorStore's gcs driver for Orbax's arrays. Train from data there, checkpoint there, kill -9 at
step 7 (where a run once hung on its TensorBoard upload), resume from there to step 8, bitwise
equal to a local run, with the TensorBoard scalars readable there; export from there;
bad buckets, globs and workdirs (and a tokenizer larger than the embedding) fail naming the path
or flag; gs:// goes through gcsfs even where TensorFlow is importable."""
import os
import re
import signal
import subprocess
import sys
import textwrap

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


def read_steps(logdir, tag):
  """{event file: [steps logged with `tag`]} over every object under `logdir`, the parts of one
  event file (NAME, NAME.000001, ...) read in name order as one file."""
  from reasonir_jax.data.tfrecord import iter_records
  from tensorboardX.proto import event_pb2
  out = {}
  for name in paths.listdir(logdir):
    assert "tfevents" in name, name
    base = re.sub(r"\.\d{6}$", "", name)
    for _, data in iter_records(paths.join(logdir, name)):  # checks both CRCs of every record
      event = event_pb2.Event.FromString(data)
      out.setdefault(base, []).extend(event.step for v in event.summary.value if v.tag == tag)
  return out


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    from reasonir_jax.training import tensorboard_remote
    tensorboard_remote.UPLOAD_SECS = 0.0  # an upload at every flush, from both threads
    overrides, workdir, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def callback(step, state, metrics):
      if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final save
    train.run(load_config("tiny", overrides), workdir, step_callback=callback)
    """)


def _upload_sample(prefix):
  from reasonir_jax.data.sample import default_sample_tfrecords
  for local in paths.glob(default_sample_tfrecords()):
    with open(local, "rb") as src, paths.open(f"{prefix}/{os.path.basename(local)}", "wb") as dst:
      dst.write(src.read())
  return f"{prefix}/*.tfrecord"


@pytest.mark.timeout(500)
@pytest.mark.slow
def test_train_kill_resume_export_on_a_bucket(bucket, make_tiny_config, small_model_overrides,
                                              make_child_env, start_child_trainer, tmp_path, capsys,
                                              monkeypatch):
  from reasonir_jax import export, train
  from reasonir_jax.data.sample import default_sample_tfrecords
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training import tensorboard_remote
  from safetensors.numpy import load_file

  sources = f"remote={_upload_sample(f'{bucket}/data')}"
  workdir = f"{bucket}/runs/one"
  run = [*RUN, "train.num_steps=8", f"data.sources={sources}"]
  # Killed with SIGKILL at step 7, right after its step-6 checkpoint (where a run to gs:// once
  # hung on its TensorBoard upload); the local reference trains meanwhile.
  child = start_child_trainer(CHILD, [*small_model_overrides, *run], workdir, 7, tmp_path,
                              make_child_env())
  local = train.run(make_tiny_config(*RUN, "train.num_steps=8",
                                     f"data.sources=remote={default_sample_tfrecords()}"),
                    str(tmp_path / "local"))
  out, _ = child.communicate(timeout=400)
  assert child.returncode == -signal.SIGKILL and "step 7 " in out, out
  steps = ckpt_lib.CheckpointManager(workdir).all_steps()
  assert steps in ([3], [3, 6]), (steps, out)  # step 6's asynchronous save may not have committed
  assert paths.exists(f"{workdir}/checkpoints/3/commit_success.txt")
  assert paths.exists(f"{workdir}/checkpoints/3/data/process_0-of-1.json")
  assert not os.path.exists("gs:")  # nothing landed in a local ./gs:/ folder
  assert sorted(os.listdir(tmp_path / "stage"))  # the process's files were staged locally

  monkeypatch.setattr(tensorboard_remote, "UPLOAD_SECS", 0.0)
  resumed = train.run(make_tiny_config(*run), workdir)
  assert f"from step {steps[-1]}" in capsys.readouterr().out
  assert ckpt_lib.CheckpointManager(workdir).all_steps() == [6, 8]  # checkpoint.keep=2
  for got, want in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(local.params)):
    assert np.isfinite(np.asarray(want)).all()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The resumed run's scalars all there, each once, in order; the killed run's up to the step
  # before its last flush (SummaryWriter.flush does not wait for events still in its queue).
  killed, again = sorted(read_steps(f"{workdir}/tensorboard", "train/loss").values())
  assert killed and killed == list(range(1, len(killed) + 1)), killed
  assert again == list(range(steps[-1] + 1, 9)), again

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
