"""Base configs the files in `configs/` start from. `dinov2_ssl()` is the official DINOv2 recipe's
defaults (`dinov2/configs/ssl_default_config.yaml`); each config file states its differences."""

import ml_collections

from dinojax import parallel

OFFICIAL_EPOCH_LENGTH = 1250


def dinov2_ssl() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "ssl"
  c.seed = 0

  # scan_blocks: compile one block, scanned over all (faster compiles); with remat it also plans
  # less memory, without it more (docs/benchmarks.md). Needs drop_path_uniform. Its params are
  # stacked (docs/configs.md). remat_policy: what a rematerialised block keeps for the backward.
  c.model = ml_collections.ConfigDict(dict(
      variant="vit_large", patch_size=16, img_size=224, drop_path_rate=0.3, drop_path_uniform=True,
      init_values=1e-5, ffn="mlp", qkv_bias=True, proj_bias=True, ffn_bias=True,
      num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
      attention="xla", remat=False, remat_policy="nothing_saveable", scan_blocks=False,
      dtype="bfloat16"))

  c.dino = ml_collections.ConfigDict(dict(loss_weight=1.0, koleo_weight=0.1, student_temp=0.1))
  c.dino.head = ml_collections.ConfigDict(dict(prototypes=65536, bottleneck_dim=256, nlayers=3,
                                               hidden_dim=2048))
  # mask_group: images whose mask ratios are stratified together (0: each device's batch, as the
  # official per-GPU collate).
  c.ibot = ml_collections.ConfigDict(dict(loss_weight=1.0, mask_probability=0.5,
                                          mask_ratio=(0.1, 0.5), mask_group=0, separate_head=False))
  c.ibot.head = ml_collections.ConfigDict(dict(prototypes=65536, bottleneck_dim=256, nlayers=3,
                                               hidden_dim=2048))
  c.centering = "softmax"  # or "sinkhorn_knopp"
  # loss_group: images whose KoLeo nearest neighbours and iBOT centre means are taken together, as
  # the official code does on each GPU: its `batch_size_per_gpu` (0: each device's batch).
  c.loss_group = 0
  c.center_momentum = 0.9
  c.sinkhorn_iterations = 3

  c.teacher = ml_collections.ConfigDict(dict(momentum=0.992, final_momentum=1.0, warmup_temp=0.04,
                                             temp=0.07, warmup_temp_epochs=30))
  c.optim = ml_collections.ConfigDict(dict(
      epochs=100, weight_decay=0.04, weight_decay_end=0.4, base_lr=0.004, warmup_epochs=10,
      min_lr=1e-6, clip_grad=3.0, freeze_last_layer_epochs=1, patch_embed_lr_mult=0.2,
      layerwise_decay=0.9, adamw_beta1=0.9, adamw_beta2=0.999,
      no_weight_decay=("bias", "norm", "gamma")))
  c.crops = ml_collections.ConfigDict(dict(global_size=224, global_scale=(0.32, 1.0), local_number=8,
                                           local_size=96, local_scale=(0.05, 0.32)))

  c.batch_size = 1024  # global; the official 64 per GPU × 16 GPUs
  c.steps_per_epoch = OFFICIAL_EPOCH_LENGTH
  c.total_steps = 0  # 0: optim.epochs × steps_per_epoch
  c.data = ml_collections.ConfigDict(dict(source="tfds:imagenet2012", split="train", threads=16))
  c.eval = ml_collections.ConfigDict(dict(
      every=12500, source="tfds:imagenet2012", train_split="train", heldout_split="validation",
      batch_size=256, knn_k=20, knn_temperature=0.07))
  # The evaluations during training (`evaluators.base`), their settings from `eval`: k-NN of the
  # backbone's CLS features, and pictures of its features (also before the first step).
  c.evals = ml_collections.ConfigDict(dict(knn=dict(type="knn"),
                                           pictures=dict(type="pictures", first=True)))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1250, keep=3))
  c.log_every = 50
  c.profile = profile()
  c.init_from = ""  # workdir of an earlier run to start from (weights, teacher, centres)

  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "model": 1})
  # Multi-slice TPU: mesh sizes across slices (e.g. data=4); `mesh` is then the layout within one.
  c.mesh_dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  # The most of the parameter bytes the rules may leave replicated on a mesh with axes beyond `data`
  # (norms, biases and the heads a small model cannot split stay under it; a rule table that misses
  # `embed`, `mlp` or `heads` goes over).
  c.sharding_tolerance = 0.3
  return c


def profile() -> ml_collections.ConfigDict:
  """The `profile` section of every training job: `steps=(start, stop)` traces steps start .. stop-1
  into the workdir (`dinojax.profile`); () traces nothing."""
  return ml_collections.ConfigDict(dict(steps=()))


def frozen_backbone(name: str, attention: str = "auto", dtype: str = "auto") -> ml_collections.ConfigDict:
  """The `backbone` section of the jobs that read a frozen DINOv2 (k-NN and linear evaluation,
  dino.txt): a released backbone by hub `name` with its converted `checkpoint`; the backbone of a
  dinojax SSL or distillation run (`workdir`, at `workdir_step`, 0: the latest; its architecture from
  the run's config.json); or, with an empty name, the ViT `model` describes (random weights unless
  `checkpoint`). `dtype` "auto" computes in float16 on GPUs, as the official evaluations' autocast,
  and in bfloat16 on TPUs and CPUs (`ops.platform.compute_dtype`); remat, remat_policy and scan_blocks as `model.*`
  in the DINOv2 configs (they matter only where the backbone trains)."""
  return ml_collections.ConfigDict(dict(
      name=name, checkpoint="", workdir="", workdir_step=0, attention=attention, dtype=dtype,
      remat=False, remat_policy="nothing_saveable", scan_blocks=False,
      model=ml_collections.ConfigDict()))


# The ViT of the tiny CPU configs (`dinov2_vits14.py:tiny`, the teacher of the tiny distillation, the
# evaluations of its runs): 32-px images, 4-px patches, 4 blocks of width 96. LayerScale 1.0 (the
# value the released checkpoints load with): 1e-5 leaves the CLS token nearly image-independent for
# thousands of steps, and a run of minutes must see features form.
TINY_VIT = dict(embed_dim=96, depth=4, num_heads=3, patch_size=4, img_size=32, init_values=1.0,
                dtype="float32")


def dinov2_lvd_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What `vitl14.yaml` and `vitg14.yaml` change from the defaults: SwiGLU /14 backbones with drop
  path 0.4, separate 131072-prototype heads, Sinkhorn-Knopp, 500 epochs at lr 2e-4, 98-px locals."""
  c.model.update(patch_size=14, img_size=224, drop_path_rate=0.4, ffn="swiglu")
  c.dino.head.update(prototypes=131072, bottleneck_dim=384)
  c.ibot.update(separate_head=True)
  c.ibot.head.update(prototypes=131072)
  c.centering = "sinkhorn_knopp"
  c.teacher.momentum = 0.994
  c.optim.update(epochs=500, weight_decay_end=0.2, base_lr=2e-4, warmup_epochs=80, layerwise_decay=1.0)
  c.crops.local_size = 98
  return c


def curation() -> ml_collections.ConfigDict:
  """Automatic data curation with the papers' settings: DINOv2 §3 / App. A.3 (embeddings compared by
  cosine, self-deduplication on a 64-NN graph at similarity 0.6, relative deduplication at 0.45,
  N = 4 retrieved neighbours per query) and Vo et al. 2024 (4-level hierarchical k-means of the
  web-image pool, `configs/4levels_web_based_images.yaml` of facebookresearch/ssl-data-curation).
  Collections and the embedding checkpoint are the user's; `configs/curate_*.py` set them."""
  c = ml_collections.ConfigDict()
  c.job = "curate"
  c.seed = 0

  # Specs: digits:<split>, folder:<root>, list:<file of paths>, tfds:<name>:<split>, each may end in [a:b].
  c.data = ml_collections.ConfigDict(dict(pool="", queries="", evaluation="", image_size=224))

  # The paper embeds with a self-supervised ViT-H/16 (ImageNet-22k); the largest released DINOv2
  # backbone is the closest loadable one. Random weights (checkpoint None) only exercise the pipeline.
  c.model = ml_collections.ConfigDict(dict(name="vitg14", overrides=ml_collections.ConfigDict(),
                                           attention="xla"))
  c.model.checkpoint = ml_collections.FieldReference(None, field_type=str)

  c.embed = ml_collections.ConfigDict(dict(shard_size=100_000, batch_size=256, num_threads=16,
                                           num_devices=0))  # num_devices 0: all of this process's

  # ScaNN: k-means tree of √n leaves, anisotropic hashing (2-dim blocks, threshold 0.2), exact
  # re-ranking; the leaves searched are measured in bench/curation.py (docs/benchmarks.md).
  c.search = ml_collections.ConfigDict(dict(
      method="auto", exact_below=20_000, num_leaves=0, num_leaves_to_search=32,
      training_sample_size=100_000, dims_per_block=2, anisotropic_threshold=0.2, reorder=300,
      shards_per_block=10))

  c.dedup = ml_collections.ConfigDict(dict(k=64, threshold=0.6, evaluation_threshold=0.45))

  # knn: N nearest pool images per query. sample (small query sets): M images from each query's
  # k-means cluster of the pool; the paper tunes N and M by visual inspection.
  c.retrieve = ml_collections.ConfigDict(dict(mode="knn", k=4, clusters=100_000, samples_per_query=10_000,
                                              kmeans_batch_size=65_536, kmeans_epochs=1))

  # Vo et al. (configs/4levels_web_based_images.yaml): 10M, 500k, 50k, 10k clusters, the first level
  # reached as 100k clusters split 100 ways; `resampling_steps` counts the first k-means (1: no
  # resampling), then 10 steps with 10, 5, 3 points per cluster; 50 iterations per k-means. The
  # level-1 k-means saves its state every `checkpoint_period` seeds and every iteration, its split
  # every `split_part_clusters` clusters. A process waiting on others' files gives up after
  # `barrier_timeout` seconds (ours; raise it where `curate plan` shows a longer level 1 or 2).
  c.cluster = ml_collections.ConfigDict(dict(
      input="dedup", n_clusters=[100_000, 500_000, 50_000, 10_000], n_splits=[100, 1, 1, 1],
      resampling_steps=[1, 10, 10, 10], sample_sizes=[1, 10, 5, 3], iterations=50, checkpoint_period=10_000,
      split_part_clusters=100, barrier_timeout=86_400.0))

  # Balanced hierarchical sampling; random within level-1 clusters, the official default ("c" in its
  # web config is the resampling strategy of its k-means, not this one).
  c.sample = ml_collections.ConfigDict(dict(target_size=142_000_000, strategy="r", seed=0))

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.sharding_rules = parallel.DEFAULT_RULES
  return c


def curation_pairs() -> ml_collections.ConfigDict:
  """Curation of image–caption pairs for dino.txt (Jose et al., 2025: "curating data using both text
  and image modalities"; docs/curation.md says what the paper leaves open and what is chosen here).
  The text side is MetaCLIP's balancing by metadata (Xu et al., 2024), the image side Vo et al.
  (2024): deduplication, the 4-level hierarchical k-means of `curation()`, balanced sampling; the
  curated set is the intersection of the two sides' selections, as the paper combines them:
  `sample.target_size` pairs balanced by image concepts among those MetaCLIP keeps."""
  base = curation()
  c = ml_collections.ConfigDict()
  c.job = "curate_pairs"
  c.seed = 0
  # The pairs: a caption source (`digits`, `jsonl:<file>`, `tfds:<name>`) and its split (may end in
  # a slice, `train[0:1000]`); `evaluation` optionally an image collection (as `curation()`) whose
  # near-duplicates are dropped from the image side.
  c.data = ml_collections.ConfigDict(dict(pairs="", split="train", evaluation="", image_size=224))
  c.model = base.model  # the frozen DINOv2 that embeds the images
  # The caption encoder: a CLIP text tower (`checkpoint`: OpenAI or Hugging Face CLIP weights;
  # None: random weights of `variant`, announced). A pair's text embedding is the normalised mean of
  # its captions' normalised `text_embeds`.
  c.text_model = ml_collections.ConfigDict(dict(variant="ViT-L/14", overrides=ml_collections.ConfigDict(),
                                                context_length=77, batch_size=256, attention="xla"))
  c.text_model.checkpoint = ml_collections.FieldReference(None, field_type=str)
  c.embed, c.search = base.embed, base.search
  # Vo et al.'s settings on both sides. Captions are near-duplicates from cosine 0.95 (ours: at the
  # images' 0.6, unrelated captions of a CLIP text tower would merge). A pair is dropped when either
  # side repeats another pair's ("both": only when both repeat the same pair).
  for side in ("image", "text"):
    c[side] = ml_collections.ConfigDict(dict(dedup=base.dedup.to_dict(), cluster=base.cluster.to_dict()))
    del c[side].cluster.input  # always the side's deduplicated pairs
  del c.text.dedup.evaluation_threshold  # evaluation images are compared with images only
  c.text.dedup.threshold = 0.95
  # The text side's balancing: "metaclip" (the paper's: captions matched against MetaCLIP's metadata
  # entries, `metadata` a path to its metadata.json, which dinojax does not ship, or a text file with
  # one entry a line; a pair stays when a draw for any entry it matches falls under min(1, t / the
  # entry's matches)), or "kmeans" (ours: Vo et al. on caption embeddings with `cluster`, keeping
  # `sample.text_size`). t: MetaCLIP's for its 2.5B-pair set (20k gave its 400M one); dino.txt's set
  # is about 2.3B pairs and the paper gives no t.
  c.text.method = "metaclip"
  c.text.metadata = ml_collections.FieldReference(None, field_type=str)
  c.text.t = 170_000
  c.pair_dedup = "either"
  # One pass of the official schedule (50k steps of 8192 pairs); with text.method="kmeans", drawn
  # among three times as many from the text side (ours: the paper gives neither size; at 2x the image
  # side has too little left to flatten, at 4x the text side's balance is diluted, docs/curation.md).
  c.sample = ml_collections.ConfigDict(dict(target_size=409_600_000, text_size=1_228_800_000,
                                            strategy="r", seed=0))
  c.mesh = base.mesh
  c.sharding_rules = base.sharding_rules
  return c
