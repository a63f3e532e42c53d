#!/usr/bin/env bash
# Every GPU benchmark for one device lease, each under its own time limit so one failure or hang
# leaves the others' rows; full logs go to $OUT (or /tmp/gpu_checks).
#
#   bash bench/gpu_checks.sh                        # env attention ssl segment vit
#   bash bench/gpu_checks.sh attention ssl          # a subset, in that order
#   bash bench/gpu_checks.sh ssl ssl_scan           # the step unrolled, then scanned with remat
#   bash bench/gpu_checks.sh linear                 # the linear evaluation job at ViT-L size
#   LENGTHS=257,261 IMPLS=pallas,cudnn bash bench/gpu_checks.sh attention ssl_pallas
#   SSL_ARGS="--set model.drop_path_rate=0.0" bash bench/gpu_checks.sh ssl   # extra ssl_step.py args
#
# Wheels in .whl/ (packages the GPU image lacks) are installed first. The image runs Python 3.12 and
# reaches no registry, so fetch them on a machine that does:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml-collections==1.1.0 grain==0.2.18 array-record portpicker orbax-checkpoint==0.12.8
set -u
out=${OUT:-/tmp/gpu_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...: runs COMMAND with a limit, logs to $out/NAME.log
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > >(tee -a "$out/$name.log") 2>> "$out/$name.err"
  local rc=$?
  echo "=== $name: rc $rc in $((SECONDS - start)) s"
  [ $rc -ne 0 ] && tail -n 15 "$out/$name.err" | cut -c1-400
  return $rc
}

env_info() {
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, torch, transformers as t
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__,
      'torch', torch.__version__, 'transformers', t.__version__); print(jax.devices())"
}

attention() {  # LENGTHS and IMPLS override the DINOv2 lengths and every implementation
  local impls=${IMPLS:-pallas,pallas-triton,cudnn,xla}
  step attention 150 python3 bench/attention.py --impls "$impls" --lengths "${LENGTHS:-54,257,261,1374}"
  [ -n "${LENGTHS:-}" ] || step attention 80 python3 bench/attention.py --impls "$impls" --lengths 4096 --batch 8
}

ssl() {  # the device's step time alone (--data cached); batch 32 if 64 fails (out of memory)
  local attention=${SSL_ATTENTION:-cudnn} extra
  read -r -a extra <<< "${SSL_ARGS:-}"
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 step ssl 240 python3 bench/ssl_step.py \
    --config configs/dinov2_vitl14.py --batch 64 --steps 20 --data cached --attention "$attention" --set 'profile.steps=(4,7)' "${extra[@]}"
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 step ssl 160 python3 bench/ssl_step.py \
      --config configs/dinov2_vitl14.py --batch 32 --steps 20 --data cached --attention "$attention" "${extra[@]}"
  fi
}

ssl_pallas() {
  SSL_ATTENTION=pallas ssl
}

ssl_scan() {  # blocks scanned with remat (3x faster compiles at ViT-L): what it costs per step
  SSL_ARGS="--set model.scan_blocks=True --set model.remat=True ${SSL_ARGS:-}" ssl
}

linear() {  # the linear evaluation at ViT-L/14 size (random backbone, digits at 224): compiles, fits, img/s
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 step linear 300 python3 -m dinojax.main \
    --config configs/linear_eval.py:vitl14_reg --workdir /tmp/linear_l14 --config.data.source=digits \
    --config.data.val_split=heldout --config.total_steps=40 --config.eval.every=40 \
    --config.checkpoint.every=40 --config.log_every=10
}
vit() {
  XLA_PYTHON_CLIENT_PREALLOCATE=false step vit 120 python3 bench/vit_forward.py --dtype bfloat16 \
    --batch 64 --models vits14,vitb14,vitl14
}

segment() {
  XLA_PYTHON_CLIENT_PREALLOCATE=false step segment 100 python3 bench/segment.py --images 8 --profile /tmp/segment_trace
}

names=("$@")
[ $# -gt 0 ] || names=(env_info attention ssl segment vit)
for name in "${names[@]}"; do
  [ "$name" = env ] && name=env_info
  "$name"
done
echo "=== done ($(date +%T))"
