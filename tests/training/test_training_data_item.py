"""The input pipeline's position as the `data` item of the Orbax checkpoint (Grain's checkpoint
handler): written per process beside the train state, restored into the iterator, refused on
another process count with what to do; checkpoints from before the item (the data_state/ tree)
resume on one process and are refused, saying why, when they hold file-sharded positions."""
import json
import os
import shutil

import pytest


def _state_and_data(make_tiny_config):
  from reasonir_jax import sharding as shd
  from reasonir_jax.data.pipeline import make_train_iterator
  from reasonir_jax.training.step import build_trainer
  cfg = make_tiny_config("mesh.shape=(8,1,1)", "data.prefetch=2", "data.bucket_lengths=(48,)",
                         "data.max_length=48")
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  data = make_train_iterator(cfg, None, trainer.mesh, trainer.batch_sharding.spec)
  return cfg, trainer, trainer.init_state(0), data


def _tokens(batch):
  import numpy as np
  return np.asarray(batch["query"]["input_ids"])


def test_data_item_restores_the_position_and_checks_the_process_count(make_tiny_config, tmp_path):
  import numpy as np
  from reasonir_jax.training import checkpoint as ckpt_lib
  cfg, trainer, state, data = _state_and_data(make_tiny_config)
  for _ in range(3):
    next(data)
  manager = ckpt_lib.CheckpointManager(str(tmp_path), cfg.checkpoint)
  manager.save(state, data, step=3, force=True)
  want = [_tokens(next(data)) for _ in range(3)]  # moving on does not change what was saved
  manager.wait()
  item = tmp_path / "checkpoints" / "3" / ckpt_lib.DATA_ITEM / "process_0-of-1.json"
  assert json.loads(item.read_text())["batch_index"] == 3
  assert not (tmp_path / ckpt_lib.OLD_DATA_STATE_DIR).exists()

  _, _, _, fresh = _state_and_data(make_tiny_config)
  _, data_state = manager.restore(trainer.abstract_state(), data_iterator=fresh)
  assert data_state["batch_index"] == 3 and fresh.get_state() == data_state
  for w in want:
    np.testing.assert_array_equal(_tokens(next(fresh)), w)
  # Without an iterator the state is only read back.
  assert manager.restore(trainer.abstract_state())[1] == data_state

  # As if two processes had written it (their meta says so; each wrote its own file).
  meta_file = next(p for p in (tmp_path / "checkpoints" / "3" / "meta").iterdir() if p.is_file())
  meta = json.loads(meta_file.read_text())
  meta_file.write_text(json.dumps({**meta, "process_count": 2}))
  with pytest.raises(ValueError, match=r"written by 2 processes, this run has 1.*resume with 2 "
                                       r"processes.*--config.init_from"):
    manager.restore(trainer.abstract_state(), data_iterator=fresh)
  manager.close()
  data.close(), fresh.close()


def test_checkpoints_from_before_the_data_item(make_tiny_config, tmp_path):
  from reasonir_jax.training import checkpoint as ckpt_lib
  cfg, trainer, state, data = _state_and_data(make_tiny_config)
  next(data)
  manager = ckpt_lib.CheckpointManager(str(tmp_path), cfg.checkpoint)
  manager.save(state, data, step=1, force=True)
  manager.wait()
  # As the previous version laid it out: the position in data_state/<step>/, no data item.
  step_dir = tmp_path / "checkpoints" / "1"
  old = json.loads((step_dir / ckpt_lib.DATA_ITEM / "process_0-of-1.json").read_text())
  shutil.rmtree(step_dir / ckpt_lib.DATA_ITEM)
  old_dir = tmp_path / ckpt_lib.OLD_DATA_STATE_DIR / "1"
  os.makedirs(old_dir)
  (old_dir / "process_0-of-1.json").write_text(json.dumps({**old, "version": 2}))
  _, _, _, fresh = _state_and_data(make_tiny_config)
  _, data_state = manager.restore(trainer.abstract_state(), data_iterator=fresh)
  assert data_state["batch_index"] == 1 and fresh.get_state()["batch_index"] == 1
  # A file-sharded position of several processes has no record-sharded equivalent.
  two = {**old, "version": 2, "process_index": 0, "process_count": 2}
  with pytest.raises(ValueError, match="split the data by file.*start a new workdir"):
    fresh.set_state(two)
  manager.close()
  data.close(), fresh.close()
