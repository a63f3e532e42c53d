"""Open-vocabulary segmentation throughput: dinojax's Talk2DINO pipeline vs a PyTorch reference built
from `transformers` models (Dinov2WithRegistersModel + CLIPTextModelWithProjection), same random
weights, same steps, measured in the same run.

  python bench/segment.py                  # ViT-B/14-reg, 21 classes, 375×500 images, 448 protocol
  python bench/segment.py --images 16      # more images
  python bench/segment.py --profile DIR    # then trace 2 dinojax images: wall time and top kernels

On a GPU both pipelines run there (PyTorch with TF32 matmuls, XLA's default for fp32).

Both: short side 448, 448 windows at stride 224 (2 windows per image here), sigmoid-cosine masks with
background cleaning from the last block's CLS attention logits, bilinear upsampling, averaging,
resize back, argmax. Text embeddings (21 classes, one prompt) are computed once, outside the timing;
the two pipelines take turns image by image. Prints images/s, the ratio (> 1: dinojax faster) and how often the two pipelines' labels agree.
"""

import argparse
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, Dinov2WithRegistersConfig,
                          Dinov2WithRegistersModel)

from dinojax import convert, hub
from dinojax.data.clip_tokenizer import tokenize
from dinojax.evaluators import open_vocab, talk2dino
import trace_summary  # bench/, beside this script

VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
       "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "sky")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MEAN = torch.tensor([0.485, 0.456, 0.406], device=DEVICE)
STD = torch.tensor([0.229, 0.224, 0.225], device=DEVICE)


def reference_models(seed: int = 0):
  torch.manual_seed(seed)
  vit = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518,
      num_register_tokens=4)).eval()
  clip = CLIPTextModelWithProjection(CLIPTextConfig(
      vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
      num_attention_heads=8, max_position_embeddings=77, projection_dim=512, hidden_act="quick_gelu",
      bos_token_id=49406, eos_token_id=49407)).eval()
  psi = torch.nn.Sequential(torch.nn.Linear(512, 768), torch.nn.Tanh(), torch.nn.Linear(768, 768)).eval()
  return vit, clip, psi


def converted(vit, clip, psi) -> hub.Talk2DINOModels:
  numpy = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}
  # attention="auto" as `hub.talk2dino` sets it.
  backbone, backbone_params = convert.from_state_dict(numpy(vit), num_heads=12, attention="auto")
  text, text_params = convert.clip_text_from_state_dict(numpy(clip), num_heads=8)
  sd = numpy(psi)
  proj, proj_params = convert.talk2dino_from_state_dict(
      {"linear_layer.weight": sd["0.weight"], "linear_layer.bias": sd["0.bias"],
       "hidden_layers.0.weight": sd["2.weight"], "hidden_layers.0.bias": sd["2.bias"]})
  return hub.Talk2DINOModels(backbone, backbone_params, text, text_params, proj, proj_params)


class TorchPipeline:
  """The same protocol in PyTorch (on the GPU when there is one); the last block's q and k are
  hooked, as the official code does."""

  def __init__(self, vit, text, window=448, stride=224, lambda_bg=0.2):
    vit, text = vit.to(DEVICE), text.to(DEVICE)
    self.vit, self.text, self.window, self.stride, self.lambda_bg = vit, text, window, stride, lambda_bg
    modules = dict(vit.encoder.layer[-1].attention.named_modules())
    self.hooked = {}
    # transformers 5.2x names the projections q_proj/k_proj, earlier releases attention.query/key.
    for name, old_name in (("q", "query"), ("k", "key")):
      module = modules.get(f"{name}_proj", modules.get(f"attention.{old_name}"))
      module.register_forward_hook(lambda m, i, o, name=name: self.hooked.__setitem__(name, o))

  def window_masks(self, crops):  # (b, 3, h, w) in [0, 255]
    b, _, h, w = crops.shape
    x = F.interpolate(crops, (self.window, self.window), mode="bilinear") if (h, w) != (self.window,) * 2 else crops
    x = (x / 255 - MEAN[:, None, None]) / STD[:, None, None]
    tokens = self.vit(pixel_values=x).last_hidden_state[:, 5:]
    heads = self.vit.config.num_attention_heads
    q = self.hooked["q"].reshape(b, -1, heads, 64).transpose(1, 2)
    k = self.hooked["k"].reshape(b, -1, heads, 64).transpose(1, 2)
    cls_logits = (q[:, :, :1] @ k.transpose(-1, -2))[:, :, 0, 5:] / 8.0  # (b, heads, hw)
    g = self.window // 14
    feats = F.normalize(tokens, dim=-1)
    masks = torch.sigmoid(torch.einsum("bpd,nd->bnp", feats, self.text))  # (b, N, hw)
    head_emb = F.normalize(torch.einsum("bmp,bpd->bmd", cls_logits, tokens) / (g * g), dim=-1)
    mix = torch.softmax(torch.einsum("nd,bmd->bnm", self.text, head_emb), -1)
    per_class = torch.softmax(torch.einsum("bnm,bmp->bnp", mix, cls_logits), -1)
    lo, hi = per_class.amin((1, 2), keepdim=True), per_class.amax((1, 2), keepdim=True)
    per_class = (per_class - lo) / torch.maximum(hi, hi - lo)
    m_lo, m_hi = masks.amin((1, 2), keepdim=True), masks.amax((1, 2), keepdim=True)
    masks = (masks + self.lambda_bg * (per_class * (m_hi - m_lo) + m_lo)) / (1 + self.lambda_bg)
    return F.interpolate(masks.reshape(b, -1, g, g), (h, w), mode="bilinear", align_corners=True)

  @torch.inference_mode()
  def __call__(self, image):
    h, w = image.shape[:2]
    size = open_vocab.rescale_size(h, w)
    img = torch.from_numpy(image).to(DEVICE).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size, mode="bilinear")
    img = img.round().clamp(0, 255)  # as OpenCV resizing uint8 images (and dinojax)
    boxes = open_vocab.window_grid(*size, self.window, self.stride)
    crops = torch.cat([img[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in boxes])
    masks = self.window_masks(crops)
    preds = torch.zeros(masks.shape[1], *size, device=DEVICE)
    count = torch.zeros(1, *size, device=DEVICE)
    for (y1, x1, y2, x2), m in zip(boxes, masks):
      preds[:, y1:y2, x1:x2] += m
      count[:, y1:y2, x1:x2] += 1
    preds = F.interpolate((preds / count)[None], (h, w), mode="bilinear")[0]
    return preds.argmax(0).cpu().numpy()


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", type=int, default=8)
  parser.add_argument("--height", type=int, default=375)
  parser.add_argument("--width", type=int, default=500)
  parser.add_argument("--profile", default="", help="trace 2 more dinojax images into this directory and "
                      "print their wall time and top kernels (device busy < wall: host-bound)")
  args = parser.parse_args()
  # fp32 matmuls in TF32 on both sides, as XLA does on a GPU by default.
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), torch on {DEVICE}, "
        f"torch threads: {torch.get_num_threads()}")
  vit, clip, psi = reference_models()
  models = converted(vit, clip, psi)
  rng = np.random.default_rng(0)
  images = [(rng.random((args.height, args.width, 3)) * 255).astype(np.uint8) for _ in range(args.images)]

  text = talk2dino.class_embeddings(models, VOC)  # once, as a deployment would
  with torch.inference_mode():
    ids = torch.from_numpy(tokenize(["a photo of a {}.".format(c) for c in VOC]).astype(np.int64))
    torch_text = F.normalize(psi(clip(input_ids=ids).text_embeds), dim=-1)
  scorer = talk2dino.window_scorer(models, text)
  windows = len(open_vocab.window_grid(*open_vocab.rescale_size(args.height, args.width)))

  def run_dinojax(image):
    scores, = open_vocab.sliding_window_scores([image], scorer, batch_size=windows)
    return open_vocab.scores_to_labels(scores)

  def timed(fn, image):
    start = time.perf_counter()
    return fn(image), time.perf_counter() - start

  reference = TorchPipeline(vit, torch_text)
  run_dinojax(images[0])  # compile
  reference(images[0])
  # Alternating image by image, so a change in the machine's load hits both pipelines alike.
  ours, theirs, t_jax, t_torch = [], [], 0.0, 0.0
  for image in images:
    (labels, t), (ref_labels, t_ref) = timed(run_dinojax, image), timed(reference, image)
    ours.append(labels)
    theirs.append(ref_labels)
    t_jax, t_torch = t_jax + t, t_torch + t_ref
  agree = np.mean([(a == b).mean() for a, b in zip(ours, theirs)])
  print("model | classes | image | windows/img | dinojax img/s | pytorch img/s | ratio | label agreement")
  print(f"ViT-B/14-reg + CLIP B/16 text | {len(VOC)} | {args.height}×{args.width} | {windows} | "
        f"{args.images / t_jax:.3f} | {args.images / t_torch:.3f} | {t_torch / t_jax:.2f} | {agree:.4f}")
  if args.profile:
    jax.profiler.start_trace(args.profile, create_perfetto_trace=True)
    start = time.perf_counter()
    for image in images[:2]:
      run_dinojax(image)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    print(f"\nProfile of {min(2, len(images))} dinojax images, {1e3 * wall:.1f} ms wall:")
    print(trace_summary.summarise(args.profile))


if __name__ == "__main__":
  main()
