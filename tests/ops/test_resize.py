import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinojax.ops.resize import torch_bicubic_resize


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("in_size,size,scale_factor", [
    (37, (16, 16), None),        # 518 grid -> 224 input (shrink)
    (37, (20, 14), None),        # non-square shrink
    (16, (37, 50), None),        # grow
    (37, None, ((16 + 0.1) / 37, (14 + 0.1) / 37)),   # the official interpolate_offset path
    (37, None, ((50 + 0.1) / 37, (40 + 0.1) / 37)),
    (14, (14, 20), None),        # one axis unchanged
])
def test_matches_torch_interpolate(in_size, size, scale_factor, antialias):
  x = np.random.default_rng(0).normal(size=(2, in_size, in_size, 5)).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, scale_factor=scale_factor,
                      mode="bicubic", align_corners=False, antialias=antialias)
  ref = ref.permute(0, 2, 3, 1).numpy()
  out = np.asarray(torch_bicubic_resize(x, size=size, scale_factor=scale_factor, antialias=antialias))
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=2e-5)


def test_differs_from_jax_image_resize():
  # jax.image.resize uses a = -0.5; the position embeddings need PyTorch's a = -0.75.
  import jax
  x = np.random.default_rng(1).normal(size=(1, 37, 37, 3)).astype(np.float32)
  ours = np.asarray(torch_bicubic_resize(x, size=(16, 16)))
  theirs = np.asarray(jax.image.resize(x, (1, 16, 16, 3), "bicubic", antialias=False))
  assert np.abs(ours - theirs).max() > 1e-3


def test_needs_exactly_one_of_size_and_scale():
  x = np.zeros((1, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match="exactly one"):
    torch_bicubic_resize(x)
  with pytest.raises(ValueError, match="exactly one"):
    torch_bicubic_resize(x, size=(2, 2), scale_factor=(0.5, 0.5))
