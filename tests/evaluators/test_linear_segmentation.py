"""The released DINOv2 segmentation heads: window logits against a PyTorch composition on
`transformers`' DINOv2 (mmseg's `BNHead` on the official `get_intermediate_layers` with centre
padding), head files in mmcv's layout, the multi-scale + flip protocol against a NumPy/PyTorch
rewrite of mmseg's `aug_test`, and the `linear_segmentation_eval` job on a tiny VOC-layout folder."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import jobs
from dinojax import config_args, convert, hub
from dinojax.data import segmentation as seg_data
from dinojax.evaluators import linear_segmentation, open_vocab
from dinojax.models.segmenter import LinearSegmenter

CONFIG = jobs.REPO / "configs/linear_segmentation_eval.py"
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def _mmcv_head(channels: int, classes: int, seed: int = 0) -> dict:
  """A head as mmcv saves an `EncoderDecoder` (random running statistics)."""
  g = torch.Generator().manual_seed(seed)
  return {"meta": {"mmseg_version": "0.27.0"}, "state_dict": {
      "decode_head.conv_seg.weight": torch.randn(classes, channels, 1, 1, generator=g) * 0.1,
      "decode_head.conv_seg.bias": torch.randn(classes, generator=g) * 0.1,
      "decode_head.bn.weight": 1 + 0.1 * torch.randn(channels, generator=g),
      "decode_head.bn.bias": 0.1 * torch.randn(channels, generator=g),
      "decode_head.bn.running_mean": 0.1 * torch.randn(channels, generator=g),
      "decode_head.bn.running_var": 0.5 + torch.rand(channels, generator=g),
      "decode_head.bn.num_batches_tracked": torch.tensor(1000)}}


@pytest.mark.parametrize("layers", [1, 4])
def test_window_logits_match_the_official_composition(tmp_path, layers):
  hf = jobs.hf_dinov2(depth=4, image_size=56)
  torch.save(_mmcv_head(layers * 32, 5), tmp_path / "head.pth")
  window = np.random.default_rng(0).uniform(0, 255, (2, 40, 50, 3)).astype(np.float32)  # pads to 42×56
  with torch.no_grad():  # normalise, CenterPadding, last blocks normed, concat, BN, 1×1 conv, resize
    x = (torch.from_numpy(window).permute(0, 3, 1, 2) / 255 - MEAN[:, None, None]) / STD[:, None, None]
    x = F.pad(x, (3, 3, 1, 1))
    states = hf(x, output_hidden_states=True).hidden_states[-layers:]
    maps = [hf.layernorm(h)[:, 1:].reshape(2, 3, 4, 32).permute(0, 3, 1, 2) for h in states]
    sd = {k.removeprefix("decode_head."): v for k, v in torch.load(tmp_path / "head.pth")["state_dict"].items()}
    bn = torch.nn.BatchNorm2d(layers * 32).eval()
    bn.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("bn.")})
    logits = F.conv2d(bn(torch.cat(maps, dim=1)), sd["conv_seg.weight"], sd["conv_seg.bias"])
    reference = F.interpolate(logits, (40, 50), mode="bilinear", align_corners=False).numpy()

  backbone, params = convert.from_state_dict({k: v.numpy() for k, v in hf.state_dict().items()}, num_heads=2)
  found, head = convert.segmenter_head_from_state_dict(convert.load_state_dict(tmp_path / "head.pth"), 32)
  assert found == layers
  model = LinearSegmenter(backbone, layers, num_classes=5)
  scorer = linear_segmentation.window_scorer(model, {"params": {"backbone": params["params"], "head": head}})
  np.testing.assert_allclose(np.asarray(scorer(jnp.asarray(window))), reference, atol=1e-4)


# Released architectures, shrunk: width 32, 4 blocks.
SMALL = dict(embed_dim=32, num_heads=2, depth=4, img_size=56)


def test_hub_segmenter_reads_the_blocks_and_classes_from_the_head_file(tmp_path):
  torch.save(_mmcv_head(4 * 32, 21), tmp_path / "dinov2_vits14_voc2012_ms_head.pth")
  model, params = hub.dinov2_segmenter("vits14", head=tmp_path / "dinov2_vits14_voc2012_ms_head.pth", **SMALL)
  assert (model.layers, model.num_classes) == (4, 21)
  logits = jax.jit(model.apply)(params, jnp.zeros((1, 30, 44, 3)))
  assert logits.shape == (1, 3, 4, 21)  # centre-padded to 42×56

  with pytest.raises(ValueError, match="reads the last 4 blocks; the backbone has 2"):
    hub.dinov2_segmenter("vits14", head=tmp_path / "dinov2_vits14_voc2012_ms_head.pth", **{**SMALL, "depth": 2})
  torch.save(_mmcv_head(3 * 32, 21), tmp_path / "three_blocks.pth")  # 1.5 blocks of a 64-wide backbone
  with pytest.raises(ValueError, match="not a whole number of this backbone's 64-wide blocks"):
    hub.dinov2_segmenter("vitb14", head=tmp_path / "three_blocks.pth", **{**SMALL, "embed_dim": 64})
  head = _mmcv_head(32, 150)
  del head["state_dict"]["decode_head.bn.running_var"]
  torch.save(head, tmp_path / "broken.pth")
  with pytest.raises(KeyError, match=r"lacks \['bn.running_var'\]"):
    hub.dinov2_segmenter("vits14", head=tmp_path / "broken.pth", **SMALL)


def _toy_scorer(weights, ramps):
  """Per-pixel class logits from the colour plus ramps across the window: windows disagree where
  they overlap, so their averaging shows."""
  def score(windows):
    b, h, w, _ = windows.shape
    y, x = jnp.meshgrid(jnp.arange(h) / h, jnp.arange(w) / w, indexing="ij")
    colour = jnp.einsum("bhwc,kc->bkhw", windows / 255.0, weights)
    return colour + ramps[:, 0, None, None] * y + ramps[:, 1, None, None] * x
  return score


def _mmseg_aug_test(image, weights, ramps, ratios, flip, short, long, window, stride):
  """mmseg's MultiScaleFlipAug + slide_inference + aug_test, written out in NumPy/PyTorch."""
  total = 0
  copies = [(r, f) for r in ratios for f in ((False, True) if flip else (False,))]
  for ratio, mirrored in copies:
    img = torch.from_numpy(np.ascontiguousarray(image[:, ::-1] if mirrored else image)).float()
    h0, w0 = img.shape[:2]
    scale = min(int(long * ratio) / max(h0, w0), int(short * ratio) / min(h0, w0))
    h, w = int(h0 * scale + 0.5), int(w0 * scale + 0.5)
    # The image resize is `open_vocab.resize_image` (tested in test_open_vocab.py): two float32
    # bilinear resizes disagree on a few pixels that land on x.5 before rounding.
    img = open_vocab.resize_image(img.numpy().astype(np.uint8), (h, w))
    preds, count = np.zeros((len(weights), h, w)), np.zeros((h, w))
    for r in range(max(h - window + stride - 1, 0) // stride + 1):
      for c in range(max(w - window + stride - 1, 0) // stride + 1):
        y2, x2 = min(r * stride + window, h), min(c * stride + window, w)
        y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
        crop = img[y1:y2, x1:x2]
        yy, xx = np.meshgrid(np.arange(y2 - y1) / (y2 - y1), np.arange(x2 - x1) / (x2 - x1), indexing="ij")
        logits = np.einsum("hwc,kc->khw", crop / 255.0, weights) + ramps[:, 0, None, None] * yy + \
            ramps[:, 1, None, None] * xx
        preds[:, y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1
    logits = F.interpolate(torch.from_numpy(preds / count)[None], (h0, w0), mode="bilinear",
                           align_corners=False)[0]
    probs = torch.softmax(logits, dim=0).numpy()
    total = total + (probs[:, :, ::-1] if mirrored else probs)
  return total / len(copies)


def test_multi_scale_flip_protocol_matches_mmseg_aug_test():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (45, 70, 3)).astype(np.uint8)
  weights, ramps = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
  protocol = dict(short=40, long=200, window=32, stride=20)
  ours = linear_segmentation.class_probabilities(
      image, _toy_scorer(jnp.asarray(weights), jnp.asarray(ramps)), ratios=(1.0, 1.5), flip=True,
      short_side=40, long_side=200, window=32, stride=20, batch_size=3)
  reference = _mmseg_aug_test(image, weights, ramps, (1.0, 1.5), True, **protocol)
  np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-5)
  # One scale, no flip: the argmax of the averaged window logits.
  single = linear_segmentation.class_probabilities(image, _toy_scorer(jnp.asarray(weights), jnp.asarray(ramps)),
                                                   short_side=40, long_side=200, window=32, stride=20)
  scores, = open_vocab.sliding_window_scores([image], _toy_scorer(jnp.asarray(weights), jnp.asarray(ramps)),
                                             short_side=40, long_side=200, window=32, stride=20)
  np.testing.assert_array_equal(np.argmax(single, 0), np.argmax(scores, 0))


def _voc_folder(root, count=3):
  benchmark = seg_data.BENCHMARKS["voc"]
  rng = np.random.default_rng(0)
  for d in (benchmark.image_dir, benchmark.mask_dir, "ImageSets/Segmentation"):
    (root / d).mkdir(parents=True, exist_ok=True)
  for i in range(count):
    h, w = (50, 70) if i % 2 else (64, 48)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / benchmark.image_dir / f"im{i}.jpg")
    mask = np.where(rng.random((h, w)) < 0.05, 255, rng.integers(0, 21, (h, w))).astype(np.uint8)
    Image.fromarray(mask).save(root / benchmark.mask_dir / f"im{i}.png")
  (root / benchmark.split_file).write_text("\n".join(f"im{i}" for i in range(count)))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["voc,tiny", "voc,ms,tiny"])
def test_job_scores_a_voc_folder(tmp_path, variant):
  _voc_folder(tmp_path / "voc")
  config = config_args.override(config_args.load_config(f"{CONFIG}:{variant}"),
                                {"data.source": f"folder:{tmp_path / 'voc'}"})
  result = linear_segmentation.run(config, str(tmp_path / "out"))
  saved = json.loads((tmp_path / "out" / "miou.json").read_text())
  assert saved == result and result["images"] == 3 and 0 <= result["miou"] <= 1
  assert len([k for k in result if k.startswith("iou/")]) == 21


def test_job_names_a_head_for_another_benchmark(tmp_path):
  _voc_folder(tmp_path / "voc", count=1)
  torch.save(_mmcv_head(32, 150), tmp_path / "ade_head.pth")
  config = config_args.override(config_args.load_config(f"{CONFIG}:voc,tiny"),
                                {"data.source": f"folder:{tmp_path / 'voc'}",
                                 "head.checkpoint": str(tmp_path / "ade_head.pth")})
  with pytest.raises(ValueError, match="The head predicts 150 classes; voc has 21"):
    linear_segmentation.run(config, str(tmp_path / "out"))


@pytest.mark.slow
def test_segment_takes_grey_rgba_and_extreme_shapes_and_names_bad_ones():
  model, params = hub.dinov2_segmenter("vits14", layers=1, num_classes=5, **{**SMALL, "depth": 2})
  rng = np.random.default_rng(0)
  protocol = dict(short_side=56, long_side=224, window=56, stride=28)
  for shape in [(37, 53), (30, 20, 4), (5, 300, 3)]:  # grey, RGBA, capped by the long side
    labels = linear_segmentation.segment(rng.integers(0, 256, shape, dtype=np.uint8), model, params, **protocol)
    assert labels.shape == shape[:2] and labels.dtype == np.int32 and 0 <= labels.min() <= labels.max() < 5
  with pytest.raises(ValueError, match=r"Expected an H×W×\{1,3,4\} image, got shape \(10, 10, 5\)"):
    linear_segmentation.segment(np.zeros((10, 10, 5), np.uint8), model, params, **protocol)
