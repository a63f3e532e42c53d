"""Time of a run's first and second checkpoint save: dinojax's array handler (replica-parallel only
for slices of ≥ 1 MiB) against orbax's default one, on the same replicated state in the same run.

  python bench/checkpoint_save.py                  # 8 fake CPU devices, 150 leaves of ~37 KB
  python bench/checkpoint_save.py --leaves 300

Each leaf has its own shape, as a model's parameters mostly do, so nothing compiled for one leaf
serves another.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402  (after XLA_FLAGS on purpose)
import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from dinojax import checkpoint  # noqa: E402  (registers dinojax's array handler)


def _save_twice(state):
  mgr = checkpoint.manager(tempfile.mkdtemp(), max_to_keep=None)
  times = []
  for step in (1, 2):
    start = time.perf_counter()
    checkpoint.save(mgr, step, state)
    mgr.wait_until_finished()
    times.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--leaves", type=int, default=150)
  args = parser.parse_args()
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {f"w{i}": jax.device_put(jnp.ones((96, 96 + i)), replicated) for i in range(args.leaves)}
  print(f"devices: {jax.device_count()} × {jax.devices()[0].device_kind}, {args.leaves} replicated leaves")
  print("handler | first save s | second save s")
  ours = _save_twice(state)
  print(f"dinojax (replica-parallel from 1 MiB) | {ours[0]:.2f} | {ours[1]:.2f}", flush=True)
  ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(), override=True)
  default = _save_twice(state)
  print(f"orbax default | {default[0]:.2f} | {default[1]:.2f}")


if __name__ == "__main__":
  main()
