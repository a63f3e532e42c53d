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


def _torchvision_eval_geometry(h, w, resize, crop):
  """What torchvision's Resize(resize) then CenterCrop(crop) do to an h×w PIL image, restated: the
  short side (the width when h == w) becomes `resize`, the long side resize·long/short truncated;
  a side shorter than the crop is zero-padded by (crop - side) // 2 before it, so its box starts
  that far outside the image; a longer side is cut at round((side - crop) / 2), halves to even.
  Returns ((resized h, w), crop box (left, top, right, bottom) in the resized image)."""
  rh, rw = (int(resize * h / w), resize) if w <= h else (resize, int(resize * w / h))
  start = lambda n: -((crop - n) // 2) if n < crop else int(round((n - crop) / 2))
  left, top = start(rw), start(rh)
  return (rh, rw), (left, top, left + crop, top + crop)


# (h, w): ImageNet's common shapes, odd, tall, wide, square, smaller than the resize or the crop.
EVAL_SHAPES = [(332, 500), (334, 500), (375, 500), (500, 375), (500, 333), (300, 451), (400, 605),
               (451, 300), (256, 256), (224, 224), (257, 311), (199, 301), (100, 80), (80, 100),
               (33, 47), (1, 5), (7, 1), (256, 400), (399, 256), (512, 512), (480, 640), (281, 1003),
               (1003, 281), (225, 226)]


@pytest.mark.parametrize("resize, crop", [(256, 224), (224, 224), (200, 224)])
def test_eval_crop_is_torchvision_resize_then_center_crop(resize, crop):
  rng = np.random.default_rng(0)
  for h, w in EVAL_SHAPES:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    (rh, rw), box = _torchvision_eval_geometry(h, w, resize, crop)
    # PIL's crop fills outside the image with zeros: torchvision's padding.
    expected = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BICUBIC).crop(box))
    assert images.resize_short_side(image, resize).shape[:2] == (rh, rw), (h, w)
    np.testing.assert_array_equal(images.resize_center_crop(image, crop, resize), expected,
                                  err_msg=f"{h}×{w}")


def test_eval_crop_official_sizes_and_offsets():
  # Worked out from torchvision's rules by hand, where rounding the long side or flooring the
  # offset would differ: 451·256/300 = 384.85 → 384; 500·256/332 = 385.5 → 385, offset 80.5 → 80;
  # 605·256/400 = 387.2 → 387, offset 81.5 → 82.
  shapes = {(300, 451): (256, 384), (332, 500): (256, 385), (334, 500): (256, 383),
            (400, 605): (256, 387), (451, 300): (384, 256)}
  for (h, w), size in shapes.items():
    assert images.resize_short_side(np.zeros((h, w, 3), np.uint8), 256).shape[:2] == size
  ramp = np.broadcast_to(np.arange(387, dtype=np.uint8)[None, :, None], (256, 387, 3))
  assert images.center_crop(ramp, 224)[0, 0, 0] == 82
  ramp = np.broadcast_to(np.arange(385, dtype=np.uint8)[None, :, None], (256, 385, 3))
  assert images.center_crop(ramp, 224)[0, 0, 0] == 80
  padded = images.center_crop(np.full((3, 230, 3), 7, np.uint8), 6)  # rows 1..3 of 6 hold the image
  assert padded[:, 0, 0].tolist() == [0, 7, 7, 7, 0, 0]
