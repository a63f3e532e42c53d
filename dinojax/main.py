"""Runs the job a config names: `python -m dinojax.main --config configs/<file>.py[:arg] --workdir DIR`.

Any config value can be overridden on the command line (`--config.resolution=224`), and an
evaluation's settings too (`--config.evals.knn.every=0` turns the k-NN off). An unknown key
or a value that makes no sense (`dinojax.config_check`) stops the job before anything is built, in
one line naming the key, with exit status 2.
"""

import importlib
import logging as std_logging
import os

import jax
from absl import app, flags, logging

from dinojax import config_check, parallel

# Job name -> module with `run(config, workdir)`.
JOBS = {
    "curate": "dinojax.curation.pipeline",
    "curate_pairs": "dinojax.curation.pairs",
    "dinotxt": "dinojax.trainers.dinotxt",
    "distill": "dinojax.trainers.distill",
    "knn_eval": "dinojax.evaluators.knn",
    "linear_eval": "dinojax.evaluators.linear",
    "linear_segmentation_eval": "dinojax.evaluators.linear_segmentation",
    "log_regression_eval": "dinojax.evaluators.log_regression",
    "pca_features": "dinojax.evaluators.pca",
    "ssl": "dinojax.trainers.ssl",
    "talk2dino": "dinojax.trainers.talk2dino",
    "talk2dino_eval": "dinojax.evaluators.segmentation",
}

_CONFIG = config_check.define_config_flag("Path to a config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs and checkpoints.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Join a multi-process run from the environment (TPU pod, SLURM).")


def init_distributed() -> None:
  """Joins the other processes of a multi-host run, from flags or (with --distributed) the
  environment; CPU runs exchange data over gloo."""
  if _NUM_PROCESSES.value > 1:
    parallel.join_processes(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()


def use_compilation_cache(workdir: str) -> None:
  """XLA's persistent compilation cache in WORKDIR/xla_cache: a resumed or repeated run loads its
  compiled steps instead of compiling them again (minutes for the large models on a pod). The
  JAX_COMPILATION_CACHE_DIR environment variable, when set, decides instead (empty: no cache)."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))


def write_config(config, workdir: str) -> None:
  """WORKDIR/config.json, the job's whole config as it starts: later jobs read it (a linear
  evaluation or dino.txt rebuilds an SSL run's backbone from its `model`)."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))


class _QuietLibraries(std_logging.Filter):
  """Keeps the libraries' INFO chatter (orbax logs every checkpoint step) out of the run's log."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "jax", "grain"))


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/features_pca.py")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required.")
  if config.job not in JOBS:
    raise app.UsageError(f"Unknown job {config.job!r}; choose one of {sorted(JOBS)}.")
  init_distributed()
  problems = config_check.problems(config, num_devices=jax.device_count())
  if problems:
    config_check.exit_with(problems)
  use_compilation_cache(_WORKDIR.value)
  write_config(config, _WORKDIR.value)
  logging.info("Config:\n%s", config)
  importlib.import_module(JOBS[config.job]).run(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
