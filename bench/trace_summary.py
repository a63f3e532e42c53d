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


def _device_lines(events):
  """{(pid, tid): line name} of the lines that hold device work: GPU streams, TPU "XLA Ops"; the
  host's lines when there is no device (CPU)."""
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  device = {key: f"{processes.get(key[0], '')} {name}" for key, name in threads.items()
            if processes.get(key[0], "").startswith("/device:")
            and (name.startswith("Stream") or name == "XLA Ops")}
  return device or {key: f"{processes.get(key[0], '')} {name}" for key, name in threads.items()}


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
  out = [f"traced {wall / 1e3:.1f} ms; busy per line: " +
         ", ".join(f"{name}: {t / 1e3:.1f} ms" for name, t in busy.most_common(4)),
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
