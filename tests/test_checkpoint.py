import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jobs
from dinojax import checkpoint, parallel


def _state(mesh):
  sharded = NamedSharding(mesh, P("data"))
  return {"params": {"w": jax.device_put(jnp.arange(16.0).reshape(8, 2), sharded)},
          "step": jnp.asarray(7, jnp.int32)}


def test_save_restore_onto_sharding_and_keep_last(tmp_path):
  mesh = parallel.make_mesh({"data": 8})
  state = _state(mesh)
  mgr = checkpoint.manager(tmp_path / "ckpt", max_to_keep=2)
  for step in (1, 2, 3):
    assert checkpoint.save(mgr, step, state, meta={"step": step})
  mgr.wait_until_finished()
  assert checkpoint.latest_step(mgr) == 3 and mgr.all_steps() == [2, 3]

  target_mesh = parallel.make_mesh({"fsdp": 2, "model": 4})
  target = checkpoint.abstract_like(state, {"params": {"w": NamedSharding(target_mesh, P("model"))},
                                            "step": NamedSharding(target_mesh, P())})
  restored, meta = checkpoint.restore(checkpoint.manager(tmp_path / "ckpt"), target, with_meta=True)
  assert meta == {"step": 3}
  np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
  assert restored["params"]["w"].sharding.spec == P("model")
  assert int(restored["step"]) == 7


def test_resuming_with_the_other_blocks_layout_names_scan_blocks(tmp_path):
  unrolled = {"params": {"backbone": {f"blocks_{i}": {"k": jnp.ones(3)} for i in range(2)}},
              "step": jnp.asarray(1, jnp.int32)}
  mgr = checkpoint.manager(tmp_path / "ckpt")
  checkpoint.save(mgr, 1, unrolled, meta={})
  mgr.wait_until_finished()
  stacked = {"params": {"backbone": {"blocks": {"k": jnp.ones((2, 3))}}}, "step": unrolled["step"]}
  with pytest.raises(ValueError, match=r"\['params'\]\['backbone'\] unrolled \(written with "
                                       r"model.scan_blocks=False\), this run's model has them stacked"):
    checkpoint.restore(mgr, stacked)


def test_restore_without_checkpoint_is_clear(tmp_path):
  mgr = checkpoint.manager(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpoint.restore(mgr, {"x": jnp.zeros(2)})


def _saved(directory, steps):
  """A manager over `directory` holding the state of `_state` at each of `steps`, `step` = the step."""
  state = _state(parallel.make_mesh({"data": 8}))
  mgr = checkpoint.manager(directory, max_to_keep=None)
  for step in steps:
    checkpoint.save(mgr, step, {**state, "step": jnp.asarray(step, jnp.int32)}, meta={"step": step})
  mgr.wait_until_finished()
  return mgr, state


def test_each_item_has_a_digest_of_its_files(tmp_path):
  _saved(tmp_path, (1,))
  for item in checkpoint.ITEMS:
    directory = tmp_path / "1" / item
    digest = json.loads((directory / checkpoint.DIGEST).read_text())
    assert "metadata" in digest if item == "meta" else "manifest.ocdbt" in digest
    for name, (size, _) in digest.items():
      assert (directory / name).stat().st_size == size
  assert checkpoint.damage(checkpoint.manager(tmp_path), 1) is None


@pytest.mark.parametrize("how", jobs.DAMAGES)
def test_a_damaged_checkpoint_is_named_and_the_one_before_restored(tmp_path, how, caplog):
  mgr, state = _saved(tmp_path, (1, 2))
  jobs.damage_checkpoint(tmp_path / "2", how)
  mgr = checkpoint.manager(tmp_path)
  with pytest.raises(ValueError, match="step 2 .* is damaged"):
    checkpoint.restore(mgr, state, with_meta=True)
  with caplog.at_level(logging.WARNING):
    step, restored, meta = checkpoint.restore_newest_intact(mgr, state)
  assert step == 1 and meta == {"step": 1} and int(restored["step"]) == 1
  np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
  assert "Checkpoint step 2" in caplog.text and "is damaged" in caplog.text
  assert mgr.all_steps() == [1]  # so that the resumed run can save step 2 again
  assert (tmp_path.parent / f"{tmp_path.name}_damaged" / "2").is_dir()  # kept for inspection


def test_a_checkpoint_from_before_digests_restores_unverified(tmp_path, caplog):
  mgr, state = _saved(tmp_path, (1,))
  for item in checkpoint.ITEMS:
    (tmp_path / "1" / item / checkpoint.DIGEST).unlink()
  with caplog.at_level(logging.WARNING):
    step, restored, _ = checkpoint.restore_newest_intact(checkpoint.manager(tmp_path), state)
  assert step == 1 and "unverified" in caplog.text
  np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])


def test_no_intact_checkpoint_is_an_error_naming_the_directory(tmp_path):
  mgr, state = _saved(tmp_path, (1,))
  jobs.damage_checkpoint(tmp_path / "1", "flipped_bytes")
  with pytest.raises(FileNotFoundError, match=f"No intact checkpoint in {tmp_path}"):
    checkpoint.restore_newest_intact(checkpoint.manager(tmp_path), state)
  assert checkpoint.restore_newest_intact(checkpoint.manager(tmp_path / "none"), state) is None
