import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

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


def test_restore_without_checkpoint_is_clear(tmp_path):
  mgr = checkpoint.manager(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpoint.restore(mgr, {"x": jnp.zeros(2)})
