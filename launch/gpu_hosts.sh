#!/usr/bin/env bash
# Runs a dinojax job over several GPU hosts reached by ssh, one process per host (all its GPUs).
#
#   launch/gpu_hosts.sh [--dry-run] --hosts host0,host1,... [--port 12355] [--dir PATH] \
#       CONFIG WORKDIR [--config.key=value ...]
#
# The first host is the coordinator. Every host must have the repository installed at --dir (default:
# this checkout's path) and see WORKDIR (shared filesystem or gs://). --dry-run prints the commands.
set -euo pipefail

dry_run=0 hosts="" port=12355
dir=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,9p' "$0" >&2; exit 2; }
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --hosts) hosts=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ $# -ge 2 && -n "$hosts" ]] || usage
config=$1 workdir=$2
shift 2

IFS=, read -r -a host_list <<< "$hosts"
coordinator="${host_list[0]}:$port"
printf -v overrides ' %q' "$@"
pids=()
for i in "${!host_list[@]}"; do
  remote="cd $(printf %q "$dir") && python -m dinojax.main --config $(printf %q "$config")"
  remote+=" --workdir $(printf %q "$workdir") --coordinator=$coordinator"
  remote+=" --num_processes=${#host_list[@]} --process_id=$i${overrides}"
  if (( dry_run )); then
    printf '%q ' ssh "${host_list[$i]}" "$remote"
    echo
  else
    # shellcheck disable=SC2029  # the remote command is built (and quoted) here on purpose
    ssh "${host_list[$i]}" "$remote" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
