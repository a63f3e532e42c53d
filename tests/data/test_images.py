import numpy as np
import pytest
from PIL import Image

from dinojax.data import images


def test_sample_images_and_files(tmp_path):
  cat = images.load_image("chelsea")
  assert cat.shape == (300, 451, 3) and cat.dtype == np.uint8
  gray = tmp_path / "gray.png"
  Image.fromarray(np.full((20, 30), 128, np.uint8)).save(gray)
  assert images.load_image(str(gray)).shape == (20, 30, 3)
  rgba = tmp_path / "rgba.png"
  Image.fromarray(np.zeros((10, 12, 4), np.uint8)).save(rgba)
  assert images.load_image(str(rgba)).shape == (10, 12, 3)


def test_corrupt_and_missing_images_are_clear_errors(tmp_path):
  corrupt = tmp_path / "broken.jpg"
  corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(ValueError, match="Cannot read image .*broken.jpg"):
    images.load_image(str(corrupt))
  with pytest.raises(FileNotFoundError, match="missing.png"):
    images.load_image(str(tmp_path / "missing.png"))


def test_resize_to_patch_multiple_and_normalize():
  out = images.resize_to_patch_multiple(images.load_image("chelsea"), 224, 14)
  assert out.shape[0] % 14 == 0 and out.shape[1] % 14 == 0 and out.shape[0] == 224
  normed = images.normalize(np.full((2, 2, 3), 255, np.uint8))
  np.testing.assert_allclose(normed[0, 0], (1 - images.IMAGENET_MEAN) / images.IMAGENET_STD, rtol=1e-6)
  # The lookup gives exactly the arithmetic's values, at every level and channel.
  pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  expected = (pixels.astype(np.float32) / 255.0 - images.IMAGENET_MEAN) / images.IMAGENET_STD
  np.testing.assert_array_equal(images.normalize(pixels), expected)
  with pytest.raises(ValueError, match="uint8 RGB"):
    images.normalize(pixels.astype(np.float32))
  with pytest.raises(ValueError, match="image, got shape"):
    images.to_rgb(np.zeros((4, 4, 2)))
