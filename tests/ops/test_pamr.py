"""PAMR against a torch transcription of the reference module (Araslanov & Roth's `PAMR`, as
Talk2DINO vendors it): shift kernels as dilated 3×3 convolutions over replicate-padded inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinojax.ops import pamr as pamr_lib


def _shift_kernels(with_centre):
  """One 3×3 one-hot kernel per neighbour (row-major), the centre included or not."""
  cells = [(r, c) for r in range(3) for c in range(3) if with_centre or (r, c) != (1, 1)]
  k = torch.zeros(len(cells), 1, 3, 3, dtype=torch.float64)
  for i, (r, c) in enumerate(cells):
    k[i, 0, r, c] = 1
  return k


def _neighbours(x, dilations, with_centre):
  b, c, h, w = x.shape
  flat = x.reshape(b * c, 1, h, w)
  out = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), _shift_kernels(with_centre), dilation=d)
         for d in dilations]
  return torch.cat(out, 1).reshape(b, c, -1, h, w)


def _reference_pamr(image, masks, iterations, dilations):
  """image (B, C, H, W), masks (B, N, H, W), float64."""
  sigma = _neighbours(image, dilations, True).std(2, keepdim=True)
  diffs = (image[:, :, None] - _neighbours(image, dilations, False)).abs()
  weights = torch.softmax((-diffs / (1e-8 + 0.1 * sigma)).mean(1, keepdim=True), 2)
  for _ in range(iterations):
    masks = (_neighbours(masks, dilations, False) * weights).sum(2)
  return masks


@pytest.mark.slow
@pytest.mark.parametrize("iterations,dilations", [(1, (1,)), (10, pamr_lib.TALK2DINO_DILATIONS)])
def test_pamr_matches_the_reference(iterations, dilations):
  rng = np.random.default_rng(0)
  image = rng.random((2, 19, 23, 3)).astype(np.float32) * 255
  image[:, :9] *= 0.2  # an edge, so affinities are far from uniform
  masks = rng.random((2, 4, 19, 23)).astype(np.float32)
  ours = pamr_lib.pamr(image, masks, iterations, dilations)
  ref = _reference_pamr(torch.from_numpy(image.transpose(0, 3, 1, 2)).double(),
                        torch.from_numpy(masks).double(), iterations, dilations)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_pamr_resizes_masks_to_the_image_and_checks_batches():
  rng = np.random.default_rng(1)
  image = rng.random((1, 16, 16, 3)).astype(np.float32)
  small = rng.random((1, 3, 4, 4)).astype(np.float32)
  assert pamr_lib.pamr(image, small, 2, (1, 2)).shape == (1, 3, 16, 16)
  with pytest.raises(ValueError, match="2 masks for 1 images"):
    pamr_lib.pamr(image, np.concatenate([small, small]), 2, (1,))
