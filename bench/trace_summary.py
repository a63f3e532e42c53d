"""The device time of a profiled run, by kernel: reads the Perfetto trace `jax.profiler.trace(dir,
create_perfetto_trace=True)` wrote and prints the top entries, so one device lease answers "where
does the step's time go" without bringing files back.

  python bench/trace_summary.py DIR [--top 30]
"""

import argparse
import collections
import glob
import gzip
import json
import os


# Kernel-name fragments of each kind of device work (cuBLAS/CUTLASS GEMMs, cuDNN and Pallas attention).
KINDS = {"matmul": ("gemm", "xmma", "cutlass", "nvjet", "cublas", "convolution", "dot"),
         "attention": ("fmha", "flash", "cudnn", "attention")}


def _device_lines(events):
  """{(pid, tid): line name} of the lines that hold device work, without double counting: GPU
  streams (kernels), else TPU "XLA Ops", else the host's lines (CPU)."""
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): f"{processes.get(e['pid'], '')} {e['args']['name']}" for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  on_device = {key: name for key, name in threads.items() if name.startswith("/device:")}
  for wanted in (lambda line: " Stream" in line, lambda line: line.endswith(" XLA Ops")):
    lines = {key: name for key, name in on_device.items() if wanted(name)}
    if lines:
      return lines
  return threads


def _kind(name: str) -> str:
  lowered = name.lower()
  return next((kind for kind, parts in KINDS.items() if any(p in lowered for p in parts)), "other")


def summarise(directory: str, top: int = 30) -> str:
  paths = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"No perfetto_trace.json.gz under {directory}.")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  lines = _device_lines(events)
  spans = [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in lines]
  if not spans:
    return "no device events in the trace"
  wall = max(e["ts"] + e["dur"] for e in spans) - min(e["ts"] for e in spans)
  busy = collections.Counter()
  by_name, count, hlo = collections.Counter(), collections.Counter(), {}
  for e in spans:
    busy[lines[(e["pid"], e["tid"])]] += e["dur"]
    by_name[e["name"]] += e["dur"]
    count[e["name"]] += 1
    hlo.setdefault(e["name"], (e.get("args") or {}).get("hlo_op", ""))
  total = sum(by_name.values())
  kinds = collections.Counter()
  for name, t in by_name.items():
    kinds[_kind(name)] += t
  out = [f"traced {wall / 1e3:.1f} ms; busy per line: " +
         ", ".join(f"{name}: {t / 1e3:.1f} ms" for name, t in busy.most_common(4)),
         "by kind: " + ", ".join(f"{kind} {t / 1e3:.1f} ms ({100 * t / total:.0f} %)"
                                 for kind, t in kinds.most_common()),
         "ms | % of busy | calls | kernel | hlo op"]
  for name, t in by_name.most_common(top):
    out.append(f"{t / 1e3:.2f} | {100 * t / total:.1f} | {count[name]} | {name[:90]} | {hlo[name][:40]}")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("directory")
  parser.add_argument("--top", type=int, default=30)
  args = parser.parse_args()
  print(summarise(args.directory, args.top))


if __name__ == "__main__":
  main()
