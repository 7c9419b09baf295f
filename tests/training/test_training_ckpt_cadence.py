"""When a save is due (steps or seconds) and whether a preemption save fits its grace window."""
import ml_collections
import pytest

from reasonir_jax.training import checkpoint as ckpt_lib


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  c = Clock()
  monkeypatch.setattr(ckpt_lib.time, "monotonic", c)
  return c


def _manager(tmp_path, **cfg):
  base = dict(every_steps=500, every_seconds=0.0, preemption_grace_seconds=30.0, keep=2,
              async_save=False)
  return ckpt_lib.CheckpointManager(str(tmp_path), ml_collections.ConfigDict({**base, **cfg}))


def test_the_time_cadence_saves_beside_the_step_cadence(tmp_path, clock):
  manager = _manager(tmp_path, every_seconds=600.0)
  assert manager.due(500) and not manager.due(7)
  clock.now += 599
  assert not manager.due(7)
  clock.now += 2
  assert manager.due(7)
  manager.close()
  off = _manager(tmp_path / "off")
  clock.now += 10_000
  assert not off.due(7) and off.due(1000)
  off.close()


def test_a_preemption_save_is_made_only_if_it_fits_what_is_left_of_the_window(tmp_path, clock):
  manager = _manager(tmp_path)
  plan = manager.preemption_plan(notice_time=clock.now, saved_this_step=False)
  assert plan.save and plan.wait and "no save measured" in plan.reason  # nothing to go by: try
  manager.last_save_seconds = 20.0
  notice = clock.now
  clock.now += 5  # the step in flight took 5 s of the 30
  plan = manager.preemption_plan(notice, saved_this_step=False)
  assert plan.save and plan.wait and "25.0 s of the 30 s" in plan.reason
  clock.now += 6  # 19 s left: a 20 s save cannot commit
  plan = manager.preemption_plan(notice, saved_this_step=False)
  assert not plan.save and not plan.wait and "needs ~20.0 s" in plan.reason
  manager.close()


def test_a_save_in_flight_is_waited_for_only_if_it_ends_in_time(tmp_path, clock):
  manager = _manager(tmp_path)
  manager.last_save_seconds = 20.0
  manager._started = clock.now - 15  # a periodic save of this step began 15 s ago
  notice = clock.now - 20
  plan = manager.preemption_plan(notice, saved_this_step=True)  # 10 s left, ~5 s to go
  assert not plan.save and plan.wait
  manager._started = clock.now - 1  # ~19 s to go
  plan = manager.preemption_plan(notice, saved_this_step=True)
  assert not plan.save and not plan.wait and "the save in flight needs ~19.0 s" in plan.reason
  # A new save must also wait for the one in flight: 19 + 20 s.
  plan = manager.preemption_plan(clock.now, saved_this_step=False)
  assert not plan.wait and "needs ~39.0 s" in plan.reason
  manager._started = None
  manager.close()
