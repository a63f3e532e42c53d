"""What one sharded train step computes and communicates per device, from its compiled program.

  python bench/sharded_step.py                         # SSL, ViT-S/14 official recipe, 8 fake CPU devices
  python bench/sharded_step.py --batch 32 --mesh data=2,fsdp=4
  python bench/sharded_step.py --config configs/dinotxt_vitl14.py:tiny

Builds the config's trainer (its `run`, stopped before the first step), compiles the step for the mesh
and prints XLA's per-device FLOPs and bytes (for SSL beside each device's share of the model FLOPs,
counted as `bench/ssl_step.py` does), and every collective by kind with its total bytes. A
data-parallel step should compute about its share of the model FLOPs and communicate little beyond
the gradients. No step runs, so fake CPU devices stand in for a pod's chips.
"""

import argparse
import collections
import importlib
import math
import os
import re
import sys
import tempfile
import time

DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8,
               "s64": 8, "u64": 8}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def shape_bytes(text: str) -> int:
  """Bytes of an HLO result type: `f32[8,128]{1,0}` or a tuple of them."""
  return sum(DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text))


def collectives(hlo: str) -> dict:
  """{kind: (count, bytes)} over the compiled module's collective ops (async pairs counted once).
  TPU programs write a reduce-scatter as an `all-reduce-scatter` fusion, an all-reduce whose result
  is dynamic-sliced inside it: those count as reduce-scatters of the slice's bytes."""
  computations = collections.defaultdict(list)
  name = ""
  for line in hlo.splitlines():
    header = re.match(r"^%?([\w.\-]+) .*\{$", line)
    name = header.group(1) if header else name
    computations[name].append(line)
  found = collections.defaultdict(lambda: [0, 0])
  for name, lines in computations.items():
    for line in lines:
      match = re.match(r"\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
      if not match:
        continue
      kind, result = match.group(2), match.group(1)
      if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
        kind = "reduce-scatter"
        result = next(m.group(1) for m in (re.match(r"\s*ROOT %\S+ = (.+?) dynamic-slice\(", l)
                                           for l in lines) if m)
      found[kind][0] += 1
      found[kind][1] += shape_bytes(result)
  return dict(found)


def compile_for_tpu(devices, cpu_mesh, rules, train_step, args):
  """The step the trainer built for `cpu_mesh`, compiled for TPU `devices` laid out the same way on
  its arguments `args` (state, batch, then what the trainer hands it beside them): every input
  becomes an abstract array with its sharding's spec on the TPU mesh (nothing is placed), and the
  model's platform choices (attention) are made for TPU, the mesh's platform."""
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from dinojax import parallel
  mesh = Mesh(np.asarray(devices).reshape(cpu_mesh.devices.shape), cpu_mesh.axis_names,
              axis_types=cpu_mesh.axis_types)
  sharding = lambda x: NamedSharding(mesh, x.sharding.spec)
  on_tpu = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(x))
  step = getattr(train_step, "__wrapped__", train_step)
  step = jax.jit(step, in_shardings=jax.tree.map(sharding, args),
                 out_shardings=(jax.tree.map(sharding, args[0]), None), donate_argnums=0)
  with parallel.activation_sharding(mesh, rules):
    return step.lower(*jax.tree.map(on_tpu, args)).compile()


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/dinov2_vits14.py",
                      help="config file[:arg], as dinojax.main's --config")
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (CPU backend only)")
  parser.add_argument("--topology", default="",
                      help="compile for this TPU slice instead, e.g. v5p:2x2x1 (needs libtpu, no TPU)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--mesh", default="data=-1", help="mesh sizes, e.g. data=2,fsdp=4")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set model.attention=pallas")
  parser.add_argument("--dump", default="", help="also write the compiled HLO to this file")
  args = parser.parse_args()
  tpu = None
  if args.topology:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jax.experimental import topologies
    tpu = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
    args.devices = len(tpu.devices)
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")

  import jax  # after XLA_FLAGS
  from dinojax import config_args, loop, parallel
  from dinojax.main import JOBS
  sys.path.insert(0, os.path.dirname(__file__))
  from ssl_step import step_flops

  config = config_args.load_config(args.config)
  config.batch_size = args.batch
  config.total_steps = 1
  if "loss_group" in config:  # the recipe's per-GPU batch need not divide --batch: per device
    config.loss_group = 0
  if config.job == "ssl":
    config.data.update(source="digits", split="train", threads=1)
  if "eval" in config:
    config.eval.every = 0
  config.mesh.update(data=1, fsdp=1, model=1)
  config.mesh.update({k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))})
  config_args.override(config, config_args.parse_overrides(args.set))

  compiled = {}

  def compile_first_step(run, state, train_step, *, step_args=lambda state: (), **unused):
    batch = loop.global_batch(next(run.data_iter), run.batch_shardings)
    args = (state, batch, *step_args(state))
    start = time.perf_counter()
    if tpu is not None:
      compiled["step"] = compile_for_tpu(tpu.devices, run.mesh, run.rules, train_step, args)
    else:
      with parallel.activation_sharding(run.mesh, run.rules):
        compiled["step"] = train_step.lower(*args).compile()
    compiled["seconds"] = time.perf_counter() - start
    return state, {}

  loop.train = compile_first_step
  with tempfile.TemporaryDirectory() as workdir:
    importlib.import_module(JOBS[config.job]).run(config, workdir)
  step = compiled["step"]
  if args.dump:
    with open(args.dump, "w") as f:
      f.write(step.as_text())
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  model = step_flops(config) / jax.device_count() if config.job == "ssl" else None
  device = tpu.devices[0] if tpu is not None else jax.devices()[0]
  print(f"device: {device.device_kind} x{jax.device_count()}, mesh {args.mesh}, config {args.config}, "
        f"batch {config.batch_size}, attention {config.model.get('attention', 'n/a')}, "
        f"scan_blocks {config.model.get('scan_blocks', 'n/a')}")
  print(f"trace + lower + compile: {compiled['seconds']:.1f} s")
  if config.get("model", {}).get("scan_blocks"):
    print("scan_blocks: XLA counts a loop body once, so the FLOPs, bytes and collectives below count "
          "the blocks' scan bodies once, not once per block.")
  print("per device | compiled GFLOP | model GFLOP | compiled / model | GB accessed | peak GiB")
  memory = step.memory_analysis()
  # Live at once: arguments (donated state reused for the outputs) + temporaries.
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
          + memory.temp_size_in_bytes) / 2**30 if memory else float("nan")
  print(" | ".join(["step", f"{cost['flops'] / 1e9:.2f}", f"{model / 1e9:.2f}" if model else "n/a",
                    f"{cost['flops'] / model:.2f}" if model else "n/a", f"{cost['bytes accessed'] / 1e9:.2f}",
                    f"{peak:.2f}"]))
  print("\ncollective | count | MB")
  for kind, (count, size) in sorted(collectives(step.as_text()).items()):
    print(f"{kind} | {count} | {size / 1e6:.2f}")


if __name__ == "__main__":
  main()
