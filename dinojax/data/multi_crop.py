"""DINOv2's multi-crop views (`DataAugmentationDINO`): two global crops and N local crops of one image.

  global 1: resized crop (scale 0.32–1) + flip, colour distortion, blur p = 1.0
  global 2: resized crop + flip, colour distortion, blur p = 0.1, solarize p = 0.2
  local:    resized crop (scale 0.05–0.32) + flip, colour distortion, blur p = 0.5
"""

import dataclasses

import numpy as np
from PIL import Image

from dinojax.data import augment
from dinojax.data.images import normalize


@dataclasses.dataclass(frozen=True)
class MultiCrop:
  global_size: int = 224
  global_scale: tuple[float, float] = (0.32, 1.0)
  local_size: int = 96
  local_scale: tuple[float, float] = (0.05, 0.32)
  num_local: int = 8

  def _view(self, image, size, scale, blur_p, rng, solarize_p=0.0):
    view = augment.random_resized_crop(image, size, scale, rng)
    view = augment.horizontal_flip(view, rng)
    view = augment.color_distortion(view, rng)
    view = augment.gaussian_blur(view, blur_p, rng)
    view = augment.solarize(view, solarize_p, rng)
    return normalize(np.asarray(view))

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """uint8 H×W×3 -> {"global_crops": (2, G, G, 3), "local_crops": (N, L, L, 3)}, normalised."""
    pil = Image.fromarray(image)
    global_crops = [self._view(pil, self.global_size, self.global_scale, 1.0, rng),
                    self._view(pil, self.global_size, self.global_scale, 0.1, rng, solarize_p=0.2)]
    local_crops = [self._view(pil, self.local_size, self.local_scale, 0.5, rng)
                   for _ in range(self.num_local)]
    empty = np.zeros((0, self.local_size, self.local_size, 3), np.float32)
    return {"global_crops": np.stack(global_crops),
            "local_crops": np.stack(local_crops) if local_crops else empty}
