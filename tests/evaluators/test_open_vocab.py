"""The model-agnostic sliding-window core against a NumPy transcription of mmseg's `slide_inference`
(window grid, summed scores over the coverage count, bilinear rescale back), batching across images,
and sharding over 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import NamedSharding, PartitionSpec as P

from dinojax import parallel
from dinojax.evaluators import open_vocab
from dinojax.ops import resize


def _window_contrast(crops):
  """A scorer whose output depends on the whole window (so overlapping windows disagree)."""
  x = jnp.moveaxis(crops, -1, 1)
  return jnp.concatenate([x - x.mean(axis=(2, 3), keepdims=True), jnp.tanh(x / 100.0)], axis=1)


def _reference(image, window, stride, short_side):
  """mmseg 0.x: Resize(keep_ratio, (2048, short_side)) + slide_inference(rescale=True), in torch
  (float images, so OpenCV's rounding to uint8 does not enter)."""
  h, w = image.shape[:2]
  scale = min(2048 / max(h, w), short_side / min(h, w))
  size = (int(h * scale + 0.5), int(w * scale + 0.5))
  img = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
  img = F.interpolate(img, size, mode="bilinear", align_corners=False)
  hi, wi = size
  rows = max(hi - window + stride - 1, 0) // stride + 1
  cols = max(wi - window + stride - 1, 0) // stride + 1
  preds, count = torch.zeros(1, 6, hi, wi), torch.zeros(1, 1, hi, wi)
  for r in range(rows):
    for c in range(cols):
      y1, x1 = r * stride, c * stride
      y2, x2 = min(y1 + window, hi), min(x1 + window, wi)
      y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
      crop = img[:, :, y1:y2, x1:x2]
      out = torch.cat([crop - crop.mean(dim=(2, 3), keepdim=True), torch.tanh(crop / 100.0)], 1)
      preds += F.pad(out, (x1, wi - x2, y1, hi - y2))
      count[:, :, y1:y2, x1:x2] += 1
  preds = F.interpolate(preds / count, (h, w), mode="bilinear", align_corners=False)
  return preds[0].numpy()


@pytest.mark.parametrize("shape", [(75, 101), (120, 40), (28, 28)])
def test_sliding_window_matches_mmseg(shape):
  image = (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.float32)
  ours = next(open_vocab.sliding_window_scores([image], jax.jit(_window_contrast), short_side=56,
                                               window=56, stride=28, batch_size=2))
  assert isinstance(ours, jax.Array)  # averaged and resized on the device, not copied to the host
  np.testing.assert_allclose(ours, _reference(image, 56, 28, 56), atol=3e-3)  # pixel values ~255


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(45, 61), (17, 9)])  # up and down
def test_resize_image_matches_torch_bilinear(align_corners, size):
  image = np.round(np.random.default_rng(0).random((23, 31, 5)) * 255).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size, mode="bilinear",
                      align_corners=align_corners)[0].permute(1, 2, 0).numpy()
  np.testing.assert_allclose(open_vocab.resize_image(image, size, align_corners), ref, atol=1e-3)
  rounded = open_vocab.resize_image(image.astype(np.uint8), size, align_corners)
  assert rounded.dtype == np.float32 and np.all(rounded == np.round(rounded))
  assert np.mean(rounded != np.round(ref)) < 0.01  # only ties at .5 may round the other way


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_resize_of_channels_first_maps_matches_torch(align_corners):
  maps = np.random.default_rng(1).random((3, 23, 31)).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(maps)[None], (17, 45), mode="bilinear",
                      align_corners=align_corners)[0].numpy()
  ours = resize.bilinear_resize(maps, (17, 45), (1, 2), align_corners)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_window_grid_and_rescale_size():
  assert open_vocab.rescale_size(375, 500) == (448, 597)
  assert open_vocab.rescale_size(100, 1000) == (205, 2048)  # the long side caps the scale
  grid = open_vocab.window_grid(448, 597)
  assert grid == [(0, 0, 448, 448), (0, 149, 448, 597)]
  assert open_vocab.window_grid(30, 40, 56, 28) == [(0, 0, 30, 40)]
  with pytest.raises(ValueError, match="stride"):
    open_vocab.window_grid(30, 40, 56, 0)


def test_many_images_batched_equal_one_at_a_time():
  rng = np.random.default_rng(1)
  images = [(rng.random((h, w, 3)) * 255).astype(np.uint8)
            for h, w in [(60, 90), (56, 56), (30, 200), (70, 61), (56, 120)]]
  scorer = jax.jit(_window_contrast)
  kwargs = dict(short_side=56, window=56, stride=28)
  batched = list(open_vocab.sliding_window_scores(iter(images), scorer, batch_size=3, **kwargs))
  single = [next(open_vocab.sliding_window_scores([x], scorer, batch_size=1, **kwargs)) for x in images]
  assert [s.shape[1:] for s in batched] == [x.shape[:2] for x in images]
  for a, b in zip(batched, single):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_windows_sharded_over_eight_devices_equal_one_device():
  mesh = parallel.make_mesh({"data": -1})
  image = (np.random.default_rng(2).random((64, 150, 3)) * 255).astype(np.uint8)
  scorer = jax.jit(_window_contrast)
  kwargs = dict(short_side=56, window=56, stride=28, batch_size=8)
  sharded = next(open_vocab.sliding_window_scores(
      [image], scorer, sharding=NamedSharding(mesh, P("data")), **kwargs))
  np.testing.assert_allclose(sharded, next(open_vocab.sliding_window_scores([image], scorer, **kwargs)),
                             atol=1e-5)


def test_labels_background_and_synonyms():
  scores = np.array([[[0.1, 0.6]], [[0.3, 0.2]], [[0.35, 0.1]]], np.float32)  # 3 queries, 1×2 pixels
  np.testing.assert_array_equal(open_vocab.scores_to_labels(scores), [[2, 0]])
  np.testing.assert_array_equal(open_vocab.scores_to_labels(scores, 0.35), [[-1, 0]])  # ties: background
  classes = open_vocab.reduce_queries(scores, [0, 1, 1])  # queries 1 and 2 are names of class 1
  np.testing.assert_allclose(classes, [[[0.1, 0.6]], [[0.35, 0.2]]])
  with pytest.raises(ValueError, match="queries"):
    open_vocab.reduce_queries(scores, [0, 1])


def test_cosine_scores_and_upsampling():
  rng = np.random.default_rng(3)
  feats, text = rng.normal(size=(2, 3, 4, 8)), rng.normal(size=(5, 8))
  unit = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
  expected = np.einsum("bhwd,nd->bnhw", unit, text / np.linalg.norm(text, axis=-1, keepdims=True))
  scores = open_vocab.cosine_scores(jnp.asarray(feats), jnp.asarray(text))
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  up = open_vocab.upsample_scores(scores, (7, 9))
  ref = F.interpolate(torch.from_numpy(np.array(scores)), (7, 9), mode="bilinear", align_corners=True)
  np.testing.assert_allclose(up, ref.numpy(), atol=1e-5)
