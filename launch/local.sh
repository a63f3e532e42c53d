#!/usr/bin/env bash
# Runs a dinojax job on this machine, using all of its accelerators (or CPU).
#
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   launch/local.sh --dry-run configs/features_pca.py workdir/pca      # print the command only
#
# FAKE_DEVICES=8 launch/local.sh ...   simulates 8 devices on CPU, to try a sharded mesh.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -lt 2 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

env_prefix=()
if [[ -n "${FAKE_DEVICES:-}" ]]; then
  env_prefix=(env "XLA_FLAGS=--xla_force_host_platform_device_count=${FAKE_DEVICES}" JAX_PLATFORMS=cpu)
fi
cmd=("${env_prefix[@]}" python -m dinojax.main --config "$config" --workdir "$workdir" "$@")

if (( dry_run )); then
  printf '%q ' "${cmd[@]}"
  echo
else
  exec "${cmd[@]}"
fi
