"""Automatic data curation, one step at a time (DINOv2 §3; Vo et al., 2024):

  python -m dinojax.curate embed    --config configs/curate_tiny.py --workdir DIR
  python -m dinojax.curate dedup    --config configs/curate_tiny.py --workdir DIR
  python -m dinojax.curate retrieve --config configs/curate_tiny.py --workdir DIR
  python -m dinojax.curate cluster  --config configs/curate_tiny.py --workdir DIR
  python -m dinojax.curate sample   --config configs/curate_tiny.py --workdir DIR
  python -m dinojax.curate plan     --config configs/curate_lvd142m.py   # cluster dry run

Image–caption pairs for dino.txt (`dinojax/curation/pairs.py`): the steps embed, dedup, cluster and
sample with `--config configs/curate_dinotxt_tiny.py` (or `curate_dinotxt.py`).

Each step reads the previous steps' files from DIR. On many hosts, start process i of P with
`--process_index=i --process_count=P` (processes share only the workdir); add
`--coordinator=HOST:PORT` (process 0's) to the `cluster` step to join them into one JAX job, whose
level-1 k-means then spreads the pool over all their devices; see docs/curation.md.
`python -m dinojax.main --config configs/curate_tiny.py --workdir DIR` runs all steps in one go.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dinojax import config_check, parallel
from dinojax.curation import cluster, pairs, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a curation config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory the steps read and write.")
_PROCESS_INDEX = flags.DEFINE_integer("process_index", 0, "This process's index (0..process_count-1).")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "Processes sharing the work.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0: joins the processes into one JAX job (jax.distributed), "
    "so the level-1 k-means shards the pool over all of them.")

STEPS = {"curate": pipeline.STEPS, "curate_pairs": pairs.STEPS}  # by config.job


def main(argv):
  steps = argv[1:]
  if steps == ["plan"] and _CONFIG.value is not None and "plan" in _CONFIG.value:
    p = _CONFIG.value.plan
    print(cluster.plan(_CONFIG.value, pool_size=p.pool_size, dim=p.dim, hosts=p.hosts,
                       devices_per_host=p.devices_per_host))
    return
  known = STEPS.get(_CONFIG.value.job if _CONFIG.value is not None else "curate", pipeline.STEPS)
  if len(steps) != 1 or steps[0] not in known:
    raise app.UsageError(f"Name one step: {' | '.join(known)} (got {steps or 'none'}).")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/curate_tiny.py")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required.")
  problems = config_check.problems(_CONFIG.value)
  if problems:
    config_check.exit_with(problems)
  logging.info("Config:\n%s", _CONFIG.value)
  if _COORDINATOR.value and _PROCESS_COUNT.value > 1:
    parallel.join_processes(_COORDINATOR.value, _PROCESS_COUNT.value, _PROCESS_INDEX.value)
  try:
    result = known[steps[0]](_CONFIG.value, _WORKDIR.value, _PROCESS_INDEX.value, _PROCESS_COUNT.value)
  except (FileNotFoundError, TimeoutError, ValueError, ImportError) as e:  # missing inputs or parts, settings, extras
    sys.exit(f"curate {steps[0]}: {e}")
  print(f"{steps[0]}: {result}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
