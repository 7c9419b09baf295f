"""TensorBoard event files on an object store (training/tensorboard_remote.py): tensorboardX's event
thread and the training thread flushing at once into one writer, on the GCS emulator, finish with
every record uploaded exactly once; uploads are new objects of the new records only, at most
once per interval; a failed upload loses nothing."""
import threading
import time
import uuid

import pytest

from reasonir_jax import paths
from reasonir_jax.data.tfrecord import frame_record, iter_records
from reasonir_jax.training import tensorboard_remote as tbr


def read_parts(logdir):
  """[(object name, [record data])] of every event object under `logdir`, in name order."""
  return [(name, [data for _, data in iter_records(paths.join(logdir, name))])
          for name in paths.listdir(logdir)]


def test_complete_records_never_splits_a_record():
  one, two = frame_record(b"first"), frame_record(b"second record")
  buffer = one + two
  assert tbr.complete_records(buffer) == len(buffer)
  for cut in range(len(one), len(buffer)):  # every cut inside the second record
    assert tbr.complete_records(buffer[:cut]) == len(one)
  assert tbr.complete_records(b"") == 0 and tbr.complete_records(one[:11]) == 0


def test_uploads_only_new_records_at_most_once_per_interval():
  logdir = f"memory://tb-{uuid.uuid4().hex[:8]}"
  path = f"{logdir}/events.out.tfevents.1.host"
  writer = tbr.ObjectEventWriter(path, upload_secs=3600)
  records = [frame_record(f"event {i}".encode()) for i in range(20)]
  for record in records:
    writer.write(record)
    writer.flush()  # the first flush uploads; the others are inside the interval
  assert [name for name, _ in read_parts(logdir)] == ["events.out.tfevents.1.host"]
  writer.close()
  parts = read_parts(logdir)
  assert [name for name, _ in parts] == ["events.out.tfevents.1.host",
                                         "events.out.tfevents.1.host.000001"]
  assert parts[0][1] == [b"event 0"]  # nothing uploaded twice
  assert parts[1][1] == [f"event {i}".encode() for i in range(1, 20)]
  with pytest.raises(ValueError, match="is closed"):
    writer.write(records[0])


def test_a_failed_upload_loses_nothing_and_close_names_the_object(monkeypatch, caplog):
  logdir = f"memory://tb-{uuid.uuid4().hex[:8]}"
  path = f"{logdir}/events.out.tfevents.2.host"
  writer = tbr.ObjectEventWriter(path, upload_secs=0)
  real_open, fail = paths.open, [True]

  def flaky_open(p, mode="rb", **kw):
    if "w" in mode and fail[0]:
      raise ConnectionError("store unreachable")
    return real_open(p, mode, **kw)

  monkeypatch.setattr(paths, "open", flaky_open)
  writer.write(frame_record(b"a"))
  writer.flush()  # fails: logged, kept for the next flush
  assert "retrying" in caplog.text and not paths.exists(path)
  fail[0] = False
  writer.write(frame_record(b"b"))
  writer.flush()
  assert read_parts(logdir) == [("events.out.tfevents.2.host", [b"a", b"b"])]
  writer.write(frame_record(b"c"))
  fail[0] = True
  with pytest.raises(paths.PathError, match=r"events\.out\.tfevents\.2\.host\.000001.*unreachable"):
    writer.close()
  fail[0] = False
  writer.close()  # a retried close still uploads what the failed one could not
  assert read_parts(logdir)[1] == ("events.out.tfevents.2.host.000001", [b"c"])


@pytest.mark.timeout(120)
def test_event_thread_and_caller_flush_at_once_on_the_emulator(gcs_emulator, monkeypatch):
  """The hang's conditions, at their worst: the event thread writes records (each in the four
  pieces tensorboardX writes) and flushes while the caller flushes in a loop, every flush an
  upload through gcsfs. Uploads never overlap, no record is split, lost or uploaded twice."""
  logdir = f"{gcs_emulator.bucket()}/tb"
  writer = tbr.ObjectEventWriter(f"{logdir}/events.out.tfevents.3.host", upload_secs=0)
  active, peak, real_upload = [0], [0], tbr.ObjectEventWriter._upload

  def counted_upload(self):
    active[0] += 1
    peak[0] = max(peak[0], active[0])
    time.sleep(0.002)  # widens the window an unlocked writer would overlap in
    try:
      real_upload(self)
    finally:
      active[0] -= 1

  monkeypatch.setattr(tbr.ObjectEventWriter, "_upload", counted_upload)
  want = [f"step {i}".encode() for i in range(60)]
  done = threading.Event()

  def event_thread():
    for data in want:
      record = frame_record(data)
      for piece in (record[:8], record[8:12], record[12:-4], record[-4:]):
        writer.write(piece)
        writer.flush()
    done.set()

  thread = threading.Thread(target=event_thread, daemon=True)
  thread.start()
  while not done.is_set():
    writer.flush()
  thread.join(timeout=60)
  writer.close()
  assert not thread.is_alive()
  assert peak[0] == 1
  parts = read_parts(logdir)
  assert len(parts) > 1 and [d for _, records in parts for d in records] == want


@pytest.mark.timeout(120)
def test_summary_writer_flushing_from_both_threads_on_the_emulator(gcs_emulator):
  """tensorboardX itself: its event thread flushing as often as it can while the caller flushes
  after every step (as training's MetricWriter does), every flush an upload; all scalars read back."""
  from tensorboardX import SummaryWriter
  from tensorboardX.proto import event_pb2
  logdir = f"{gcs_emulator.bucket()}/run/tensorboard"
  tbr.register(logdir, upload_secs=0)
  writer = SummaryWriter(logdir, flush_secs=0.001)
  for step in range(1, 21):
    writer.add_scalar("train/loss", 1.0 / step, step)
    writer.add_scalar("train/lr", 0.5, step)
    writer.flush()
  writer.close()
  steps = []
  for _, records in read_parts(logdir):
    for data in records:
      steps += [event_pb2.Event.FromString(data).step
                for v in event_pb2.Event.FromString(data).summary.value if v.tag == "train/loss"]
  assert steps == list(range(1, 21))
