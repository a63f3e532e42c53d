#!/usr/bin/env bash
# Runs a dinojax job on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project P] [--repo URL] [--ref REF] \
#       CONFIG WORKDIR [--config.key=value ...]
#
# Every worker clones the repository (or updates its clone), installs it with the TFDS extra, and starts
# `python -m dinojax.main --distributed`, which joins the pod through the TPU metadata. WORKDIR must be
# shared by all workers (a gs:// bucket). --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

dry_run=0 tpu="" zone="" project="" ref="main"
repo=$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo "")
usage() { sed -n '2,10p' "$0" >&2; exit 2; }
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ $# -ge 2 && -n "$tpu" && -n "$zone" && -n "$repo" ]] || usage
config=$1 workdir=$2
shift 2

gcloud=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all)
[[ -n "$project" ]] && gcloud+=(--project "$project")

printf -v overrides ' %q' "$@"
setup="if [ -d dinojax ]; then git -C dinojax fetch -q origin && git -C dinojax checkout -q $(printf %q "$ref");"
setup+=" else git clone -q $(printf %q "$repo") dinojax && git -C dinojax checkout -q $(printf %q "$ref"); fi"
setup+=" && pip install -q -e 'dinojax[tfds]'"
train="cd dinojax && python -m dinojax.main --distributed --config $(printf %q "$config")"
train+=" --workdir $(printf %q "$workdir")${overrides}"

for command in "$setup" "$train"; do
  if (( dry_run )); then
    printf '%q ' "${gcloud[@]}" --command "$command"
    echo
  else
    "${gcloud[@]}" --command "$command"
  fi
done
