"""The released DINOv2 depth heads (`hub.dinov2_depther`): depth maps against a PyTorch restatement of
the official depther (`dinov2/hub/depth/`: centre padding, the raw outputs of the official blocks with
their class tokens, the linear "bins" head or DPT, clipping, bilinear resizing) on `transformers`'
DINOv2, from head files in mmcv's layout with the official key names and shapes; heads that do not fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import jobs
from dinojax import hub

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
# ViT-S/14 shrunk to width 32 and kept 12 blocks deep, so the official blocks (2, 5, 8, 11) exist; a
# 42-px native grid (3×3 patches) needs no position-embedding interpolation and is odd, as DPT's
# strided stage makes a difference on odd grids.
SMALL = dict(embed_dim=32, num_heads=2, depth=12, img_size=42)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  """(transformers' DINOv2, its checkpoint file)."""
  model = jobs.hf_dinov2(depth=12, image_size=42)
  path = tmp_path_factory.mktemp("backbone") / "dinov2_vits14_pretrain.safetensors"
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
  return model, path


# --- The official heads, restated: module paths give the released key names and shapes. -------------
class _ConvModule(nn.Module):
  """mmcv's ConvModule, which keeps its convolution under `.conv`; activations are applied by the user."""

  def __init__(self, *args, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(*args, **kwargs)


class _ResidualUnit(nn.Module):
  def __init__(self, channels):
    super().__init__()
    self.conv1 = _ConvModule(channels, channels, 3, padding=1, bias=False)
    self.conv2 = _ConvModule(channels, channels, 3, padding=1, bias=False)

  def forward(self, x):
    return x + self.conv2.conv(F.relu(self.conv1.conv(F.relu(x))))


class _Fusion(nn.Module):
  def __init__(self, channels, first):
    super().__init__()
    if not first:
      self.res_conv_unit1 = _ResidualUnit(channels)
    self.res_conv_unit2 = _ResidualUnit(channels)
    self.project = _ConvModule(channels, channels, 1)

  def forward(self, x, skip=None):
    if skip is not None:
      if skip.shape != x.shape:
        skip = F.interpolate(skip, x.shape[2:], mode="bilinear", align_corners=False)
      x = x + self.res_conv_unit1(skip)
    x = F.interpolate(self.res_conv_unit2(x), scale_factor=2, mode="bilinear", align_corners=True)
    return self.project.conv(x)


class _DPT(nn.Module):
  """DPT with "project" readout; stage widths dim/8, dim/4, dim/2, dim resampled ×4, ×2, ×1, ×½."""

  def __init__(self, dim, channels):
    super().__init__()
    widths = [dim // 8, dim // 4, dim // 2, dim]
    self.reassemble_blocks = nn.Module()
    self.reassemble_blocks.readout_projects = nn.ModuleList(
        nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU()) for _ in widths)
    self.reassemble_blocks.projects = nn.ModuleList(_ConvModule(dim, w, 1) for w in widths)
    self.reassemble_blocks.resize_layers = nn.ModuleList([
        nn.ConvTranspose2d(widths[0], widths[0], 4, stride=4), nn.ConvTranspose2d(widths[1], widths[1], 2, stride=2),
        nn.Identity(), nn.Conv2d(widths[3], widths[3], 3, stride=2, padding=1)])
    self.convs = nn.ModuleList(_ConvModule(w, channels, 3, padding=1, bias=False) for w in widths)
    self.fusion_blocks = nn.ModuleList(_Fusion(channels, first=i == 0) for i in range(4))
    self.project = _ConvModule(channels, channels, 3, padding=1)
    self.conv_depth = nn.Module()
    self.conv_depth.head = nn.Sequential(
        nn.Conv2d(channels, channels // 2, 3, padding=1), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(channels // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1))

  def forward(self, pairs, min_depth):
    blocks, maps = self.reassemble_blocks, []
    for i, (x, cls) in enumerate(pairs):
      b, d, h, w = x.shape
      tokens = x.flatten(2).transpose(1, 2)
      tokens = blocks.readout_projects[i](torch.cat([tokens, cls[:, None].expand_as(tokens)], -1))
      x = blocks.resize_layers[i](blocks.projects[i].conv(tokens.transpose(1, 2).reshape(b, d, h, w)))
      maps.append(self.convs[i].conv(x))
    out = self.fusion_blocks[0](maps[3])
    for i in range(1, 4):
      out = self.fusion_blocks[i](out, maps[3 - i])
    return F.relu(self.conv_depth.head(F.relu(self.project.conv(out)))) + min_depth


def _linear_bins(pairs, weight, bias, min_depth, max_depth):
  """The "lin." head: patch ‖ class token maps upsampled 4×, concatenated, 1×1 conv to 256 bin scores,
  ReLU + 0.1, normalised, the mean of the uniform bins."""
  maps = [torch.cat([p, c[:, :, None, None].expand_as(p)], 1) for p, c in pairs]
  h, w = maps[0].shape[2:]
  x = torch.cat([F.interpolate(m, (4 * h, 4 * w), mode="bilinear", align_corners=False) for m in maps], 1)
  scores = F.relu(F.conv2d(x, weight, bias)) + 0.1
  bins = torch.linspace(min_depth, max_depth, 256)
  return torch.einsum("bkhw,k->bhw", scores / scores.sum(1, keepdim=True), bins)[:, None]


def _mmcv_file(path, state_dict):
  """A head as mmcv saves the official `DepthEncoderDecoder` (with the optimizer state, as released)."""
  torch.save({"meta": {"mmcv_version": "1.7.0"}, "optimizer": {"state": {}, "param_groups": []},
              "state_dict": {f"decode_head.{k}": v for k, v in state_dict.items()}}, path)


def _reference(hf, images, blocks, head, min_depth, max_depth):
  """The official depther's `whole_inference` on transformers' DINOv2 (B, H, W)."""
  with torch.no_grad():
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) / 255 - MEAN[:, None, None]) / STD[:, None, None]
    b, _, height, width = x.shape
    pads = [((-s) % 14 // 2, (-s) % 14 - (-s) % 14 // 2) for s in (width, height)]
    x = F.pad(x, (*pads[0], *pads[1]))
    states = hf(x, output_hidden_states=True).hidden_states  # block i's raw output is states[i + 1]
    grid = (x.shape[2] // 14, x.shape[3] // 14)
    pairs = [(states[i + 1][:, 1:].reshape(b, *grid, -1).permute(0, 3, 1, 2), states[i + 1][:, 0]) for i in blocks]
    depth = head(pairs).clamp(min_depth, max_depth)
    return F.interpolate(depth, (height, width), mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "linear4", "dpt"])
def test_depth_matches_the_official_depther(backbone, tmp_path, kind):
  hf, checkpoint = backbone
  g = torch.Generator().manual_seed(1)
  dataset, blocks = {"linear": ("nyu", (11,)), "linear4": ("kitti", (2, 5, 8, 11)), "dpt": ("nyu", (2, 5, 8, 11))}[kind]
  min_depth, max_depth = {"nyu": (0.001, 10.0), "kitti": (0.001, 80.0)}[dataset]
  if kind == "dpt":
    dpt = _DPT(32, channels=16)
    with torch.no_grad():
      for p in dpt.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
      dpt.conv_depth.head[4].bias.fill_(2.0)  # depths around 2 m, some clipped at 10
    _mmcv_file(tmp_path / "head.pth", dpt.state_dict())
    head = lambda pairs: dpt(pairs, min_depth)
  else:
    channels = 2 * 32 * len(blocks)
    weight, bias = torch.randn(256, channels, 1, 1, generator=g), torch.randn(256, generator=g)
    _mmcv_file(tmp_path / "head.pth", {"conv_depth.weight": weight, "conv_depth.bias": bias})
    head = lambda pairs: _linear_bins(pairs, weight, bias, min_depth, max_depth)
  images = np.random.default_rng(0).uniform(0, 255, (2, 37, 40, 3)).astype(np.float32)  # pads to 42×42
  reference = _reference(hf, images, blocks, head, min_depth, max_depth)
  assert reference.std() > 0.01 * max_depth

  model, params = hub.dinov2_depther("vits14", checkpoint=checkpoint, head=tmp_path / "head.pth",
                                     head_type="dpt" if kind == "dpt" else "linear", dataset=dataset, **SMALL)
  assert model.blocks == blocks
  x = jnp.asarray(((images / 255 - MEAN.numpy()) / STD.numpy()).astype(np.float32))
  apply = jax.jit(model.apply, static_argnames="flip")
  np.testing.assert_allclose(np.asarray(apply(params, x)), reference, rtol=1e-4, atol=2e-4 * max_depth)
  if kind == "linear4":  # the evaluation's flip: the mean with the mirrored depth of the mirror image
    mirrored = _reference(hf, np.ascontiguousarray(images[:, :, ::-1]), blocks, head, min_depth, max_depth)
    np.testing.assert_allclose(np.asarray(apply(params, x, flip=True)), (reference + mirrored[:, :, ::-1]) / 2,
                               rtol=1e-4, atol=2e-4 * max_depth)


def test_depth_heads_that_do_not_fit_are_named(backbone, tmp_path):
  _, checkpoint = backbone
  load = lambda head, **kw: hub.dinov2_depther("vits14", checkpoint=checkpoint, head=head, **{**SMALL, **kw})
  linear = lambda channels: {"conv_depth.weight": torch.zeros(256, channels, 1, 1), "conv_depth.bias": torch.zeros(256)}
  _mmcv_file(tmp_path / "wider.pth", linear(2 * 48))  # a 1-block head of a 48-wide backbone
  with pytest.raises(ValueError, match=r"conv_depth.weight is \(256, 96, 1, 1\); on this 32-wide backbone"):
    load(tmp_path / "wider.pth")
  _mmcv_file(tmp_path / "dpt.pth", _DPT(64, channels=16).state_dict())
  with pytest.raises(ValueError, match="head_type='linear', but the file holds a dpt depth head"):
    load(tmp_path / "dpt.pth")
  with pytest.raises(ValueError, match=r"readout_projects.0.0.weight is \(64, 128\); a DPT head on this 32-wide"):
    load(tmp_path / "dpt.pth", head_type="dpt")
  _mmcv_file(tmp_path / "linear4.pth", linear(4 * 2 * 32))
  with pytest.raises(ValueError, match=r"reads blocks \(2, 5, 8, 11\); this backbone has 6"):
    hub.dinov2_depther("vits14", head=tmp_path / "linear4.pth", **{**SMALL, "depth": 6})
  with pytest.raises(ValueError, match="released for the backbones without registers; use 'vits14'"):
    hub.dinov2_depther("vits14_reg", **SMALL)
  with pytest.raises(ValueError, match="Unknown depth dataset 'nyuv2'"):
    hub.dinov2_depther("vits14", dataset="nyuv2", **SMALL)


def test_random_heads_read_the_official_blocks(backbone):
  _, checkpoint = backbone
  model, params = hub.dinov2_depther("vits14", checkpoint=checkpoint, head_type="dpt", dataset="kitti", **SMALL)
  assert model.blocks == (2, 5, 8, 11) and (model.head.min_depth, model.head.max_depth) == (0.001, 80.0)
  assert params["params"]["head"]["project"]["kernel"].shape == (3, 3, 256, 256)
  model, params = hub.dinov2_depther("vits14", checkpoint=checkpoint, layers=1, **SMALL)
  assert model.blocks == (11,) and params["params"]["head"]["conv_depth"]["kernel"].shape == (2 * 32, 256)
  with pytest.raises(ValueError, match="Unknown depth head type 'bins'"):
    hub.dinov2_depther("vits14", checkpoint=checkpoint, head_type="bins", **SMALL)
