"""DINOv2 losses against direct NumPy transcriptions, and sharded (8 devices) == unsharded."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dinojax import parallel
from dinojax.losses import dino, koleo

rng = np.random.default_rng(0)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x):
  return np.exp(_log_softmax(x))


def _np_sinkhorn(logits, temp, iters=3):
  q = np.exp(logits / temp).T  # K x B, as the official code
  b, k = q.shape[1], q.shape[0]
  q /= q.sum()
  for _ in range(iters):
    q /= q.sum(1, keepdims=True)
    q /= k
    q /= q.sum(0, keepdims=True)
    q /= b
  return (q * b).T


def _np_koleo(x, eps=1e-8):
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
  sim = x @ x.T
  np.fill_diagonal(sim, -1)
  nn = sim.argmax(-1)
  return -np.log(np.linalg.norm(x - x[nn] + eps, axis=-1) + eps).mean()


def test_dino_loss_matches_numpy():
  students = [rng.normal(size=(6, 32)).astype(np.float32) for _ in range(3)]
  teachers = [_softmax(rng.normal(size=(6, 32))).astype(np.float32) for _ in range(2)]
  ref = sum(-(t * _log_softmax(s / 0.1)).sum(-1).mean() for s in students for t in teachers)
  np.testing.assert_allclose(dino.dino_loss(students, teachers, 0.1), ref, rtol=1e-5)


def test_ibot_loss_matches_numpy():
  s = rng.normal(size=(4, 9, 16)).astype(np.float32)
  t = _softmax(rng.normal(size=(4, 9, 16))).astype(np.float32)
  masks = rng.random((4, 9)) < 0.4
  masks[2] = False  # an image with nothing masked contributes nothing
  ce = -(t * _log_softmax(s / 0.1)).sum(-1)
  ref = sum(ce[i][masks[i]].sum() / max(masks[i].sum(), 1) for i in range(4)) / 4
  weights = dino.masked_patch_weights(masks)
  np.testing.assert_allclose(dino.ibot_loss(s, t, weights, 4, 0.1), ref, rtol=1e-5)
  # The gathered form (only masked patches, as the train step uses) gives the same loss.
  flat = masks.reshape(-1)
  gathered = dino.ibot_loss(s.reshape(-1, 16)[flat], t.reshape(-1, 16)[flat],
                            np.asarray(weights).reshape(-1)[flat], 4, 0.1)
  np.testing.assert_allclose(gathered, ref, rtol=1e-5)


def test_softmax_centering_matches_numpy():
  t = rng.normal(size=(8, 16)).astype(np.float32)
  c = rng.normal(size=(1, 16)).astype(np.float32)
  np.testing.assert_allclose(dino.softmax_center(t, c, 0.04), _softmax((t - c) / 0.04), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dino.update_center(c, t, 0.9), 0.9 * c + 0.1 * t.mean(0, keepdims=True),
                             rtol=1e-6)
  valid = np.arange(8) < 5
  np.testing.assert_allclose(dino.update_center(c, t, 0.9, valid=jnp.asarray(valid)),
                             0.9 * c + 0.1 * t[:5].mean(0, keepdims=True), rtol=1e-6)


def test_sinkhorn_knopp_matches_numpy_and_normalises():
  logits = rng.normal(size=(16, 10)).astype(np.float32)
  q = np.asarray(dino.sinkhorn_knopp(logits, 0.5))
  np.testing.assert_allclose(q, _np_sinkhorn(logits.astype(np.float64), 0.5), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)                      # rows: distributions
  np.testing.assert_allclose(q.sum(0), 16 / 10, rtol=0.05)                  # columns: ≈ equal mass
  many = np.asarray(dino.sinkhorn_knopp(logits, 0.5, n_iterations=50))
  np.testing.assert_allclose(many.sum(0), 16 / 10, rtol=1e-4)


def test_sinkhorn_padded_rows_get_no_mass():
  logits = rng.normal(size=(12, 6)).astype(np.float32)
  valid = np.arange(12) < 9
  padded = np.asarray(dino.sinkhorn_knopp(logits, 0.3, valid=jnp.asarray(valid)))
  np.testing.assert_array_equal(padded[~valid], 0.0)
  np.testing.assert_allclose(padded[valid], dino.sinkhorn_knopp(logits[:9], 0.3), rtol=1e-5, atol=1e-7)


def test_koleo_matches_numpy():
  x = rng.normal(size=(10, 8)).astype(np.float32)
  koleo_loss = jax.jit(koleo.koleo_loss, static_argnames="group_size")  # one compile, not one per op
  np.testing.assert_allclose(koleo_loss(x), _np_koleo(x.astype(np.float64)), rtol=1e-5)
  # In groups of 5 rows: neighbours only within a group, every group weighing the same.
  grouped = np.mean([_np_koleo(g) for g in x.astype(np.float64).reshape(2, 5, 8)])
  np.testing.assert_allclose(koleo_loss(x, group_size=5), grouped, rtol=1e-5)
  with pytest.raises(ValueError, match="groups of 4 do not divide the batch of 10"):
    koleo.koleo_loss(x, group_size=4)


def test_center_update_averages_group_means():
  # The official update on G GPUs: each GPU's mean over its rows, averaged over the GPUs.
  t = rng.normal(size=(12, 6)).astype(np.float32)
  c = rng.normal(size=(1, 6)).astype(np.float32)
  group = np.repeat(np.arange(4), 3)
  valid = np.ones(12, bool)
  valid[[0, 1, 6, 7, 8]] = False  # group 0 keeps one row, group 2 none (left out)
  means = [t[(group == g) & valid].mean(0) for g in (0, 1, 3)]
  expected = 0.9 * c + 0.1 * np.mean(means, axis=0, keepdims=True)
  update = jax.jit(partial(dino.update_center, momentum=0.9, num_groups=4))
  got = update(c, t, valid=jnp.asarray(valid), group=jnp.asarray(group))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def _np_koleo_per_rank(features, ranks):
  """The official KoLeo on `ranks` GPUs: each GPU's loss on its own consecutive rows, then the
  average over GPUs (what the all-reduced gradients and logged value amount to)."""
  return np.mean([_np_koleo(f) for f in np.split(features.astype(np.float64), ranks)])


@pytest.mark.parametrize("mesh_axes", [{"data": 8}, {"data": 2, "fsdp": 4}])
def test_grouped_koleo_on_8_devices_is_the_per_rank_loss(mesh_axes):
  mesh = parallel.make_mesh(mesh_axes)
  features = rng.normal(size=(32, 8)).astype(np.float32)
  sharded = jax.device_put(features, parallel.batch_sharding(mesh, ndim=2))
  per_device = jax.jit(partial(koleo.koleo_loss, group_size=4))
  # A group is a device's batch: the neighbour search never leaves the device.
  hlo = per_device.lower(sharded).compile().as_text()
  assert "all-gather(" not in hlo and "all-to-all(" not in hlo and "collective-permute(" not in hlo
  np.testing.assert_allclose(per_device(sharded), _np_koleo_per_rank(features, 8), rtol=1e-5)
  # Groups spanning two devices (an official GPU batch larger than a device's) are still exact.
  np.testing.assert_allclose(jax.jit(partial(koleo.koleo_loss, group_size=8))(sharded),
                             _np_koleo_per_rank(features, 4), rtol=1e-5)


@pytest.mark.parametrize("mesh_axes", [{"data": 8}, {"data": 2, "fsdp": 4}])
def test_batch_reductions_on_8_devices_equal_one_device(mesh_axes):
  mesh = parallel.make_mesh(mesh_axes)
  batch = ("data", "fsdp")
  logits = jnp.asarray(rng.normal(size=(32, 12)), jnp.float32)
  valid = jnp.asarray(rng.random(32) < 0.7)
  group = jnp.asarray(np.repeat(np.arange(4), 8))
  center = jnp.zeros((1, 12))

  @partial(jax.shard_map, mesh=mesh, in_specs=(P(batch), P(batch), P(batch), P()),
           out_specs=(P(batch), P(), P(), P(batch)))
  def sharded(logits, valid, group, center):
    return (dino.sinkhorn_knopp(logits, 0.1, valid=valid, axis_name=batch),
            dino.update_center(center, logits, 0.9, valid=valid, axis_name=batch),
            dino.update_center(center, logits, 0.9, valid=valid, group=group, num_groups=4,
                               axis_name=batch),
            dino.sinkhorn_knopp(logits, 0.1, axis_name=batch))

  q_valid, new_center, group_center, q = jax.jit(sharded)(logits, valid, group, center)
  np.testing.assert_allclose(q_valid, dino.sinkhorn_knopp(logits, 0.1, valid=valid), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(q, dino.sinkhorn_knopp(logits, 0.1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new_center, dino.update_center(center, logits, 0.9, valid=valid), rtol=1e-5)
  np.testing.assert_allclose(group_center, dino.update_center(center, logits, 0.9, valid=valid, group=group,
                                                              num_groups=4), rtol=1e-5)
