"""The released DINOv2 ImageNet linear heads (`*_linear{,4}_head.pth`) and those a linear evaluation
writes: PyTorch `nn.Linear` state dicts <-> the `head` params of `models.classifier.LinearClassifier`."""

import numpy as np

from dinojax.convert.state_dicts import StateDict


def classifier_head_from_state_dict(sd: StateDict, in_features: int) -> dict:
  """{"kernel", "bias"} from a PyTorch `nn.Linear` state dict (`weight` (classes, in), `bias`), as the
  released `*_linear{,4}_head.pth` files hold it; the input width must be `in_features`."""
  missing = [k for k in ("weight", "bias") if k not in sd]
  if missing:
    raise KeyError(f"A linear head needs 'weight' and 'bias'; the state dict lacks {missing} "
                   f"(it has {sorted(sd)[:5]}).")
  weight = np.asarray(sd["weight"], np.float32)
  if weight.ndim != 2 or weight.shape[1] != in_features:
    raise ValueError(f"The head's weight is {tuple(weight.shape)}; this backbone and head input need "
                     f"(classes, {in_features}). Is it the head of another backbone, or of the other "
                     "number of blocks?")
  return {"kernel": weight.T, "bias": np.asarray(sd["bias"], np.float32)}


def classifier_head_to_state_dict(head: dict) -> StateDict:
  """The inverse of `classifier_head_from_state_dict`: `nn.Linear`'s `weight` and `bias`."""
  return {"weight": np.asarray(head["kernel"], np.float32).T.copy(),
          "bias": np.asarray(head["bias"], np.float32)}
