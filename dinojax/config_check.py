"""The one check of a job's config values, run by the command lines before anything is built or
compiled: a wrong value stops the job in one line that names the key, not after minutes of compiling
(a `ZeroDivisionError` at step 1) or, worse, a run that trains on it.

Rules are keyed by config path and apply to every job whose config has the key: a rule for
`batch_size` covers `eval.batch_size` and `embed.batch_size` too, unless a longer path
(`eval.every`) has its own. Keys without a rule pass; a new config key needs a rule only when some
of its values make no sense. Command-line mistakes caught while ml_collections parses the flags (an
unknown key, a value its type cannot take) are reported the same way, by `parse_flags`.
"""

import difflib
import importlib
import math
import numbers
import os
import re
import sys
from typing import Any, Callable, Iterator, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from dinojax import config_args, parallel

# Jobs whose `batch_size` and `eval.batch_size` are global batches split over the whole `mesh`
# (`loop.make_mesh`); the segmentation evaluations split theirs over each host's devices
# and curation sizes its own (`embed.num_devices`).
GLOBAL_BATCH_JOBS = ("dinotxt", "distill", "knn_eval", "linear_eval", "log_regression_eval", "ssl",
                     "talk2dino")

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive(value):
  return None if _is_int(value) and value > 0 else "must be a positive integer"


def count(value):
  return None if _is_int(value) and value >= 0 else "must be an integer >= 0"


def above_zero(value):
  return None if _is_number(value) and value > 0 else "must be a number > 0"


def at_least_zero(value):
  return None if _is_number(value) and value >= 0 else "must be a number >= 0"


def interval(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
  """A number in [low, high], each end excluded where `open_*`."""
  text = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

  def check(value):
    inside = _is_number(value) and (low < value if open_low else low <= value) and (
        value < high if open_high else value <= high)
    return None if inside else f"must be a number in {text}"
  return check


def pair(low: float, high: float, *, open_low: bool = False) -> Check:
  """A (min, max) range of two numbers with low <= min <= max <= high (low < min where `open_low`),
  e.g. a crop's area fraction: a single number is not a range."""
  lowest = interval(low, high, open_low=open_low)

  def check(value):
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or any(map(lowest, value))
        or value[0] > value[1]):
      return (f"must be a (min, max) pair with {low:g} {'<' if open_low else '<='} min <= max <= "
              f"{high:g}, e.g. '(0.1, 0.5)'")
    return None
  return check


def each(element: Check, *, what: str) -> Check:
  """A non-empty tuple (or list) of `what`, each passing `element`."""
  def check(value):
    if not isinstance(value, (tuple, list)) or not value or any(map(element, value)):
      return f"must be a non-empty tuple of {what}"
    return None
  return check


def one_of(choices: str | Sequence) -> Check:
  """One of `choices`, or of the names a module defines: `"package.module:NAME"` (imported when a
  config has the key, so a job pays only for the modules it uses)."""
  def check(value):
    known = choices
    if isinstance(choices, str):
      module, _, name = choices.partition(":")
      known = getattr(importlib.import_module(module), name)
    return None if value in known else f"must be one of {sorted(map(str, known))}"
  return check


def optional(check: Check) -> Check:
  """`check`, or empty (`""` or None: not used)."""
  return lambda value: None if value in ("", None) else check(value)


def mesh_axis(value):
  if _is_int(value) and (value > 0 or value == -1):
    return None
  return "must be a positive size or -1 (the rest)"


def existing_path(value):
  """A local file or directory that exists (remote `scheme://` paths are left to their reader)."""
  if not isinstance(value, str) or not value:
    return "must be a path"
  if "://" not in value and not os.path.exists(value):
    return "no such file or directory"
  return None


def data_source(value):
  """A spec `sources.make_source` or, for the text-alignment jobs, `captions.make_caption_source`
  reads."""
  if value == "digits" or re.fullmatch(r"(folder|list|tfds|jsonl|curated):.+", str(value)):
    return None
  return ("must name a data source: 'digits', 'folder:<root>', 'list:<file>', 'tfds:<name>', "
          "'jsonl:<file>' or 'curated:<folder>'")


def caption_source(value):
  """A spec of image–caption pairs a curation reads (`captions.make_caption_source`)."""
  if value == "digits" or re.fullmatch(r"(jsonl|tfds):.+", str(value)):
    return None
  return "must name image–caption pairs: 'digits', 'jsonl:<file>' or 'tfds:<name>'"


def collection(value):
  """A spec `curation.embed.make_collection` reads."""
  if re.fullmatch(r"(digits|folder|list|tfds):.+", str(value)):
    return None
  return ("must name an image collection: 'digits:<split>', 'folder:<root>', 'list:<file>' or "
          "'tfds:<name>:<split>'")


def templates(value):
  if isinstance(value, str):
    return one_of("dinojax.evaluators.talk2dino:TEMPLATES")(value)
  prompt = lambda t: None if isinstance(t, str) and "{}" in t else "not a prompt"
  return each(prompt, what="prompts with one '{}'")(value)


def source_split_pairs(value):
  if not isinstance(value, (tuple, list)) or any(
      not isinstance(s, (tuple, list)) or len(s) != 2 or data_source(s[0]) for s in value):
    return "must be a tuple of (source, split) pairs, e.g. '((\"tfds:imagenet_v2\", \"test\"),)'"
  return None


def c_powers(value):
  if (not isinstance(value, (tuple, list)) or len(value) != 3 or not all(map(_is_number, value[:2]))
      or positive(value[2])):
    return "must be (first power, last power, number of values), e.g. '(-6, 5, 45)'"
  return None


def profile_window(value):
  if value in ((), None):
    return None
  if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(_is_int, value))
      or not 0 <= value[0] < value[1]):
    return "must be (start, stop) steps with 0 <= start < stop, e.g. '(10, 15)', or () for none"
  return None


_FLOAT_DTYPES = ("float32", "bfloat16", "float16")
_BACKBONES = "dinojax.hub:NAMES"

RULES: dict[str, Check] = {
    # Sizes and counts of things, steps and intervals.
    **dict.fromkeys((
        "batch_size", "steps_per_epoch", "epochs", "log_every", "checkpoint.every", "checkpoint.keep",
        "threads", "num_threads", "image_size", "resolution", "global_size", "local_size",
        "img_size", "patch_size", "embed_dim", "depth", "num_heads", "width", "hidden_dim",
        "bottleneck_dim", "prototypes", "nlayers", "context_length", "vocab_size", "train_examples",
        "num_blocks", "head.layers", "window", "stride", "short_side", "long_side", "max_iter",
        "iterations", "sinkhorn_iterations", "knn_k", "shard_size", "dedup.k", "retrieve.k",
        "clusters", "samples_per_query", "kmeans_batch_size", "kmeans_epochs", "target_size",
        "num_leaves_to_search", "training_sample_size", "text_size", "dims_per_block", "shards_per_block",
        "checkpoint_period", "split_part_clusters", "pool_size", "dim", "hosts", "devices_per_host"),
        positive),
    "barrier_timeout": above_zero,  # seconds
    **dict.fromkeys((
        "seed", "total_steps", "local_number", "num_register_tokens", "mask_group", "max_images",
        "workdir_step", "teacher.step", "resize_size", "warmup_epochs", "warmup_steps",
        "freeze_last_layer_epochs", "warmup_temp_epochs", "every", "num_leaves", "exact_below",
        "num_devices", "reorder", "hidden_layers", "loss_group"), count),
    **{f"mesh.{axis}": mesh_axis for axis in parallel.MESH_AXES},
    **{f"mesh_dcn.{axis}": positive for axis in parallel.MESH_AXES},
    # Rates, weights, temperatures.
    **dict.fromkeys(("student_temp", "temp", "warmup_temp", "temperature", "knn_temperature",
                     "tol", "adam_eps"), above_zero),
    **dict.fromkeys(("base_lr", "lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad",
                     "patch_embed_lr_mult", "loss_weight", "koleo_weight", "init_values",
                     "interpolate_offset", "lambda_bg"), at_least_zero),
    **dict.fromkeys(("momentum", "final_momentum", "center_momentum", "mask_probability",
                     "background_threshold"), interval(0, 1)),
    **dict.fromkeys(("drop_path_rate", "drop_path", "adamw_beta1", "adamw_beta2", "adam_beta1",
                     "adam_beta2"), interval(0, 1, open_high=True)),
    "layerwise_decay": interval(0, 1, open_low=True),
    **dict.fromkeys(("dedup.threshold", "dedup.evaluation_threshold"), interval(-1, 1)),  # cosines
    "sharding_tolerance": interval(0, 1),
    # Ranges and lists.
    **dict.fromkeys(("global_scale", "local_scale", "crop_scale"), pair(0, 1, open_low=True)),
    "mask_ratio": pair(0, 1),
    "knn.k": each(positive, what="positive integers"),
    "n_last_blocks": each(positive, what="positive integers"),
    "learning_rates": each(above_zero, what="numbers > 0"),
    "segment.ratios": each(above_zero, what="numbers > 0"),
    "avgpool": each(lambda v: None if isinstance(v, bool) else "not a boolean", what="booleans"),
    "n_clusters": each(positive, what="positive integers"),
    "sample_sizes": each(positive, what="positive integers"),
    # The official count: the first k-means is one of the steps.
    "resampling_steps": each(positive, what="integers >= 1"),
    "n_splits": each(positive, what="positive integers"),
    "c_powers": c_powers,
    "profile.steps": profile_window,
    "templates": templates,
    "test_sets": source_split_pairs,
    # Names of implementations.
    "attention": one_of("dinojax.ops.attention:IMPLEMENTATIONS"),
    "dtype": one_of(_FLOAT_DTYPES),
    "backbone.dtype": one_of("dinojax.ops.platform:COMPUTE_DTYPES"),  # "auto": by platform
    "log_regression.dtype": one_of(("float32", "float64")),
    "ffn": one_of(("mlp", "swiglu")),
    "remat_policy": one_of("dinojax.models.vit:REMAT_POLICIES"),
    "variant": optional(one_of("dinojax.models.vit:VARIANTS")),
    "centering": one_of(("softmax", "sinkhorn_knopp")),
    "pooling": one_of("dinojax.models.text:POOLINGS"),
    "text.activation": one_of("dinojax.models.text:ACTIVATIONS"),
    "projection.act": one_of("dinojax.models.talk2dino:ACTIVATIONS"),
    "loss.kind": one_of("dinojax.losses.contrastive:LOSSES"),
    "tokenizer.kind": one_of(("clip", "sentencepiece")),
    "tokenizer.model_type": one_of(("unigram", "bpe", "char", "word")),  # SentencePiece's
    "metric": one_of("dinojax.evaluators.log_regression:METRICS"),
    "benchmark": one_of("dinojax.data.segmentation:BENCHMARKS"),
    "retrieve.mode": one_of("dinojax.curation.retrieve:MODES"),
    "search.method": one_of("dinojax.curation.search:METHODS"),
    "cluster.input": one_of("dinojax.curation.cluster:INPUTS"),
    "sample.strategy": one_of("dinojax.curation.sampling:STRATEGIES"),
    "text_model.variant": one_of("dinojax.models.text:CLIP_VARIANTS"),
    "pair_dedup": one_of("dinojax.curation.pairs:PAIR_DEDUP"),
    "text.method": one_of("dinojax.curation.pairs:TEXT_METHODS"),
    "text.t": positive,  # MetaCLIP's threshold: an entry's matches kept in expectation
    **dict.fromkeys(("model.name", "model.backbone"), one_of(_BACKBONES)),
    "backbone.name": optional(one_of(_BACKBONES)),  # empty: the ViT `backbone.model` describes
    # Data.
    "source": data_source,
    # "": skipped (an evaluation source; `eval.source` is needed when `eval.every` is not 0).
    **dict.fromkeys(("zero_shot.source", "retrieval.source", "eval.source"), optional(data_source)),
    "data.pool": collection,
    "data.pairs": caption_source,
    **dict.fromkeys(("data.queries", "data.evaluation"), optional(collection)),
    # Files read before the run starts.
    **dict.fromkeys((
        "checkpoint", "backbone.checkpoint", "head.checkpoint", "teacher.checkpoint",
        "model.checkpoint", "backbone_checkpoint", "clip_checkpoint", "model.projection",
        "projection_config", "class_names_file", "tokenizer.model", "init_from", "backbone.workdir",
        "teacher.workdir", "text.metadata"), optional(existing_path)),
}


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def rule_for(path: str) -> Check | None:
  """The rule of the longest tail of `path` that has one (`dino.head.prototypes`, then
  `head.prototypes`, then `prototypes`)."""
  parts = path.split(".")
  for i in range(len(parts)):
    rule = RULES.get(".".join(parts[i:]))
    if rule is not None:
      return rule
  return None


def _line(path: str, value, problem: str) -> str:
  return f"--config.{path}={value!r}: {problem}."


def _get(config, path: str):
  """The value at dotted `path`, or None where the config has no such key."""
  node = config
  for name in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return None
    node = node[name]
  return node


def _sizes(*values) -> bool:
  return all(positive(v) is None for v in values)


def _relations(config) -> Iterator[str]:
  """Problems between keys: each value may make sense alone but not with the other."""
  get = lambda path: _get(config, path)
  if get("total_steps") == 0 and get("optim.epochs") is None and get("epochs") is None:
    yield _line("total_steps", 0, "must be a positive integer (this job has no epochs to count instead)")
  local, large = get("crops.local_size"), get("crops.global_size")
  if get("crops.local_number") and _sizes(local, large) and local > large:
    yield _line("crops.local_size", local,
                f"a local crop must not be larger than the global one (crops.global_size={large})")
  text_size, target = get("sample.text_size"), get("sample.target_size")
  if _sizes(text_size, target) and text_size < target and get("text.method") == "kmeans":
    yield _line("sample.text_size", text_size, f"must be >= sample.target_size={target}: the image "
                "side samples its target among the text side's selection")
  stride, window = get("segment.stride"), get("segment.window")
  if _sizes(stride, window) and stride > window:
    yield _line("segment.stride", stride,
                f"windows would skip pixels: the stride must be <= segment.window={window}")
  if _sizes(get("eval.every")) and get("eval.source") == "":
    yield _line("eval.source", "", "an evaluation every eval.every steps needs a source "
                "(or set --config.eval.every=0)")
  yield from _evaluation_problems(get("evals"))
  for path, heads in _leaves(config):
    if path.endswith(".num_heads"):  # they split a ViT's embed_dim, a text tower's width
      section = path.rpartition(".")[0]
      dim_path = f"{section}.width" if get(f"{section}.width") is not None else f"{section}.embed_dim"
      dim = get(dim_path)
      if _sizes(dim, heads) and dim % heads:
        yield _line(dim_path, dim, f"must be divisible by {section}.num_heads={heads}")
  group, batch = get("loss_group"), get("batch_size")
  if _sizes(group, batch) and group and batch % group:
    yield _line("loss_group", group, f"must divide batch_size={batch} (the official per-GPU batch, "
                "or 0 for each device's batch)")
  for section in ("cluster", "image.cluster", "text.cluster"):  # image curation; both sides of pairs'
    splits = get(f"{section}.n_splits")
    if isinstance(splits, (list, tuple)) and any(s != 1 for s in splits[1:]):
      yield _line(f"{section}.n_splits", splits, "only level 1 can be split further (e.g. '[100, 1, 1, 1]')")
    levels = {k: len(v) for k in ("n_clusters", "n_splits", "resampling_steps", "sample_sizes")
              if isinstance(v := get(f"{section}.{k}"), (list, tuple))}
    if len(set(levels.values())) > 1:
      yield _line(f"{section}.n_clusters", get(f"{section}.n_clusters"),
                  f"n_clusters, n_splits, resampling_steps and sample_sizes need one entry per level, "
                  f"got {levels}")


def _closest(word: str, choices) -> str:
  close = difflib.get_close_matches(word, list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _evaluation_problems(evals) -> Iterator[str]:
  """Each `config.evals` entry is a dict naming a known evaluator `type` (its name by default) and
  only settings that evaluator takes (`evaluators.base.settings_of`), its schedule among them."""
  if not isinstance(evals, ml_collections.ConfigDict):
    return
  base = importlib.import_module("dinojax.evaluators.base")  # only for the jobs that evaluate
  for name, entry in evals.items():
    if not isinstance(entry, ml_collections.ConfigDict):
      yield _line(f"evals.{name}", entry, "must be a dict with the evaluation's type and settings, "
                  "e.g. '{\"type\": \"knn\", \"every\": 1000}'")
      continue
    kind = entry.get("type", name)
    if kind not in base.TYPES:
      yield _line(f"evals.{name}.type", kind,
                  f"must be one of {sorted(base.TYPES)}{_closest(kind, base.TYPES)}")
      continue
    takes = base.settings_of(kind)
    for key, value in entry.items():
      if key != "type" and key not in takes:
        yield _line(f"evals.{name}.{key}", value, f"a {kind!r} evaluation has no such setting"
                    f"{_closest(key, takes)}; it takes {sorted(takes)}")
    if not isinstance(entry.get("first", False), bool):
      yield _line(f"evals.{name}.first", entry.first, "must be True or False")


def mesh_problems(config, num_devices: int) -> Iterator[str]:
  """The mesh must lay out `num_devices`, and a global batch must split evenly over its batch axes
  (each device then holds the same number of images)."""
  if config.job not in GLOBAL_BATCH_JOBS:
    return
  dcn = dict(config.get("mesh_dcn") or {})
  slices = math.prod(int(dcn.get(a, 1)) for a in parallel.MESH_AXES)
  if num_devices % slices:
    yield _line("mesh_dcn", dcn, f"{slices} slices do not divide the {num_devices} devices")
    return
  try:
    ici = parallel.mesh_shape(config.mesh, num_devices // slices)
  except ValueError as e:
    yield _line("mesh", dict(config.mesh), str(e).rstrip("."))
    return
  shape = {a: n * int(dcn.get(a, 1)) for a, n in zip(parallel.MESH_AXES, ici)}
  axes = dict(config.sharding_rules).get("batch")
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  shards = math.prod(shape[a] for a in axes)
  for path in ("batch_size", "eval.batch_size"):
    size = _get(config, path)
    if _is_int(size) and size > 0 and size % shards:
      yield _line(path, size, f"must be divisible by the {shards} devices of the mesh's batch axes "
                  f"{'×'.join(axes)} (mesh {shape})")


def problems(config, num_devices: int | None = None) -> list[str]:
  """Every problem of `config`'s values, one line each naming the key; with `num_devices`, also
  how its mesh and batches fit that many devices."""
  out = []
  for path, value in _leaves(config):
    rule = rule_for(path)
    problem = rule(value) if rule is not None else None
    if problem:
      out.append(_line(path, value, problem))
  out.extend(_relations(config))
  if num_devices is not None and not out:
    out.extend(mesh_problems(config, num_devices))
  return out


def exit_with(lines: Sequence[str]) -> None:
  """Stops the program as a usage error: the `lines` on stderr, no traceback, exit status 2."""
  print("\n".join(lines), file=sys.stderr)
  sys.exit(2)


# ---------------------------------------------------------------------------------------------------
# Command-line parsing
# ---------------------------------------------------------------------------------------------------
def _flag_value(argv: Sequence[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define_config_flag(help_string: str, flag_values=flags.FLAGS, sys_argv=None):
  """The `--config` flag of `dinojax.main`, parsed by `parse_flags`: unlocked while the overrides are
  read so that `--config.evals.<name>.<setting>` may add a setting an entry does not list (and
  `--config.evals.<name>='{...}'` a new evaluation); every other unknown key is refused first
  (`unknown_key`), and the parsed config is locked."""
  return config_flags.DEFINE_config_file("config", None, help_string, flag_values=flag_values,
                                         lock_config=False, accept_new_attributes=True,
                                         sys_argv=sys_argv)


def unknown_key(argv: Sequence[str], name: str = "config") -> str | None:
  """The first `--config.a.b` override in `argv` that the config has no key for (and may not add,
  `config_args.may_add`), as one line with the closest known keys; None if all are known (or the
  config cannot be read)."""
  try:
    config = config_args.load_config(_flag_value(argv, name))
  except Exception:  # the config file's own error is reported instead
    return None
  for arg in argv:
    match = re.match(rf"--?(?:no)?{name}\.([^=]+)", arg)
    if not match:
      continue
    path = match.group(1)
    keys = path.split(".")
    node, walked = config, name
    for depth, key in enumerate(keys, 1):
      if not isinstance(node, ml_collections.ConfigDict):
        return f"--{name}.{path}: {walked} is a value, not a section."
      if key not in node:
        if depth == len(keys) and config_args.may_add(path):
          break
        close = difflib.get_close_matches(key, list(node.keys()), n=3)
        hint = f"; did you mean {' or '.join(f'--{walked}.{c}' for c in close)}?" if close else "."
        if walked == f"{name}.evals":
          hint += f" A new evaluation comes whole: --{name}.evals.{key}='{{\"type\": ...}}'."
        return f"--{name}.{path}: {walked} has no key {key!r}{hint}"
      node, walked = node[key], f"{walked}.{key}"
  return None


def parse_flags(argv: list[str], name: str = "config", flag_values=flags.FLAGS) -> list[str]:
  """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`, with each command-line
  mistake one line on stderr and exit status 2: a missing config file, a config argument its file
  rejects (`configs/x.py:tiyn`), an unknown `--config.*` key, a value the key's type cannot take.
  The parsed config is locked."""
  spec = _flag_value(argv, name)
  if spec is not None and not os.path.isfile(spec.partition(":")[0]):
    exit_with([f"--{name}={spec}: no such config file."])
  unknown = unknown_key(argv, name)
  if unknown:
    exit_with([unknown])
  try:
    rest = flag_values(argv)
  except (AttributeError, KeyError) as e:  # ml_collections raises these deep in its parser
    exit_with([unknown_key(argv, name) or f"{type(e).__name__}: {e}"])
  except flags.Error as e:
    # absl wraps ml_collections' error, which wraps the config file's own one with its traceback.
    while e.__context__ is not None and "Error whilst parsing config file" in str(e):
      e = e.__context__
    exit_with([str(e) if isinstance(e, flags.Error) else f"--{name}={spec}: {e}"])
  config = flag_values[name].value
  if isinstance(config, ml_collections.ConfigDict):
    config.lock()
  return rest
