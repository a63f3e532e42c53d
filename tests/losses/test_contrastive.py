"""Contrastive losses against NumPy transcriptions of the papers' formulas, and the 8-device
shard_map formulation against one device on the same global batch (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinojax import parallel
from dinojax.losses import contrastive


def _normalized(rng, shape):
  x = rng.normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def numpy_clip_loss(image, text, logit_scale):
  logits = np.exp(logit_scale) * image.astype(np.float64) @ text.T.astype(np.float64)
  diagonal = np.arange(len(image))
  image_to_text = -_log_softmax(logits, 1)[diagonal, diagonal].mean()
  text_to_image = -_log_softmax(logits, 0)[diagonal, diagonal].mean()
  return (image_to_text + text_to_image) / 2


def numpy_siglip_loss(image, text, logit_scale, logit_bias):
  logits = np.exp(logit_scale) * image.astype(np.float64) @ text.T.astype(np.float64) + logit_bias
  labels = 2 * np.eye(len(image)) - 1
  return -np.sum(-np.log1p(np.exp(-labels * logits))) / len(image)


@pytest.fixture
def pairs():
  rng = np.random.default_rng(0)
  return _normalized(rng, (16, 8)), _normalized(rng, (16, 8))


def test_softmax_loss_matches_numpy(pairs):
  image, text = pairs
  for scale in (0.0, np.log(1 / 0.07), contrastive.MAX_LOGIT_SCALE):
    got = contrastive.contrastive_loss(jnp.asarray(image), jnp.asarray(text), jnp.float32(scale))
    np.testing.assert_allclose(got, numpy_clip_loss(image, text, scale), rtol=1e-5)


def test_sigmoid_loss_matches_numpy(pairs):
  image, text = pairs
  got = contrastive.contrastive_loss(jnp.asarray(image), jnp.asarray(text), jnp.float32(np.log(10.0)),
                                     jnp.float32(-10.0), kind="sigmoid")
  np.testing.assert_allclose(got, numpy_siglip_loss(image, text, np.log(10.0), -10.0), rtol=1e-5)


def test_matching_pairs_give_a_lower_loss(pairs):
  image, text = pairs
  matched = contrastive.contrastive_loss(jnp.asarray(image), jnp.asarray(image), jnp.float32(np.log(100)))
  unmatched = contrastive.contrastive_loss(jnp.asarray(image), jnp.asarray(text), jnp.float32(np.log(100)))
  assert matched < 0.1 < unmatched


@pytest.mark.parametrize("kind", contrastive.LOSSES)
@pytest.mark.parametrize("mesh_axes", [{"data": 8}, {"data": 2, "fsdp": 4}, {"data": 4, "model": 2}],
                         ids=["data8", "data2_fsdp4", "data4_model2"])
def test_eight_devices_equal_one_device_and_numpy(pairs, kind, mesh_axes):
  image, text = pairs
  scale, bias = jnp.float32(2.3), jnp.float32(-5.0)
  reference = (numpy_clip_loss(image, text, 2.3) if kind == "softmax"
               else numpy_siglip_loss(image, text, 2.3, -5.0))
  mesh = parallel.make_mesh(mesh_axes)
  rows = parallel.batch_sharding(mesh, parallel.DEFAULT_RULES, 2)
  sharded = [jax.device_put(x, rows) for x in (image, text)]

  def loss(image, text, scale, bias, mesh):
    return contrastive.contrastive_loss(image, text, scale, bias, kind, mesh=mesh)

  one = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(jnp.asarray(image), jnp.asarray(text), scale, bias, None)
  eight = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)(*sharded, scale, bias, mesh)
  np.testing.assert_allclose(one[0], reference, rtol=1e-5)
  np.testing.assert_allclose(eight[0], reference, rtol=1e-5)
  for g_one, g_eight in zip(one[1], eight[1]):
    np.testing.assert_allclose(np.asarray(g_eight), np.asarray(g_one), rtol=1e-4, atol=1e-6)


def test_gradient_matches_numpy_finite_differences(pairs):
  image, text = pairs
  grad = jax.grad(contrastive.contrastive_loss, argnums=2)(jnp.asarray(image), jnp.asarray(text),
                                                           jnp.float32(1.0))
  eps = 1e-4
  numeric = (numpy_clip_loss(image, text, 1.0 + eps) - numpy_clip_loss(image, text, 1.0 - eps)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3)


def test_logit_scale_is_clamped_like_clip():
  np.testing.assert_allclose(contrastive.clip_logit_scale(jnp.array([-1.0, 2.0, 9.0])),
                             [0.0, 2.0, np.log(100)], rtol=1e-6)


def test_bad_inputs_are_named():
  x = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="Unknown contrastive loss"):
    contrastive.contrastive_loss(x, x, 0.0, kind="triplet")
  with pytest.raises(ValueError, match="needs a logit_bias"):
    contrastive.contrastive_loss(x, x, 0.0, kind="sigmoid")
  with pytest.raises(ValueError, match="same"):
    contrastive.contrastive_loss(x, jnp.zeros((4, 5)), 0.0)
  with pytest.raises(ValueError, match="does not split"):
    contrastive.contrastive_loss(jnp.zeros((6, 3)), jnp.zeros((6, 3)), 0.0,
                                 mesh=parallel.make_mesh({"data": 8}))
