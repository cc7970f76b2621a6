#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one call: the CUDA tests, then `dv bench` runs (dv's step beside the
# plain diffusers loop, in the same process) of the full recipes with random weights, and ONE table at the end.
#
#   bash benchmarks/gpu.sh all                # everything, in the order below, inside $BUDGET seconds
#   bash benchmarks/gpu.sh NAME ...           # some runs (names below)
#   bash benchmarks/gpu.sh --dry-run all      # the same runs on the CPU: tiny recipes, 1 step, compile off
#
# Runs (train runs read latent batches, as from `dv cache-latents --text` shards: no frozen encoder in the step):
#   tests             pytest tests/gpu
#   dv-b8             DreamVideo, batch 8, eager; the latent-shard loader runs beside it (loader-beside)
#   dv-b8-bench       the same with cudnn.benchmark (a recipe's trainer.benchmark: true)
#   dv-b8-cl          the same with channels-last convolution weights
#   sample            one Eq. 5 video, 50 DDIM steps + VAE decode, eager (dv's sampler against the plain loop)
#   sample-graphs     the same with the recipe's sampling.compile: true (torch.compile reduce-overhead: CUDA graphs)
#   dv-b8-compile     DreamVideo, batch 8, backbone.compile (U-Net and branch), checkpointing as the recipe says
#   t2v-b8-compile    T2V, batch 8, compiled
#   dv-b16-compile    DreamVideo, batch 16, compiled
#   t2v-b16-compile   T2V, batch 16, compiled
#
# Each run has min(LIMIT, what is left of BUDGET) seconds; a run that does not fit is listed as not run. Every
# run's log and JSON, the table (table.md) and this script's output (gpu.log) end up under $OUT (default
# runs/bench-gpu): table.md and gpu.log as files, the per-run logs in runs.tar.gz (the device tool brings back
# few files). On a machine whose Python lacks dv's requirements, put their wheels in .whl/ first: they are
# installed into /tmp/site (nothing outside it is touched); nothing is downloaded.
set -u
DRY=0
if [ "${1:-}" = --dry-run ]; then DRY=1; shift; fi
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dv-gpu.XXXXXX")   # per-run logs and latent shards (they stay out of $OUT)
exec > >(tee "$OUT/gpu.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ $DRY = 1 ]; then
  # The plumbing of every run on a CPU in minutes: tiny recipes, batch 2/3, one timed step, torch.compile off
  # (compiling is tested on its own: tests/unit/test_sampling_graphs.py).
  DV=recipes/demo.yaml; T2V=recipes/demo-t2v.yaml; B8=2; B16=3
  TRAIN="--steps 1 --warmup 0"; SAMPLE="--steps 1 --warmup 0 --ddim-steps 2"; COMPILED="--steps 1 --warmup 0"
  CLIPS=16; LOADER="--steps 1 --loader-batches 2"; DEVICE="--device cpu"
  export TORCH_COMPILE_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  BUDGET=${BUDGET:-3000}; LIMIT=${LIMIT:-600}
else
  DV=recipes/dreamvideo.yaml; T2V=recipes/t2v.yaml; B8=8; B16=16
  TRAIN="--steps 5 --warmup 2"; SAMPLE="--steps 1 --warmup 1 --ddim-steps 50"; COMPILED="--steps 3 --warmup 1"
  CLIPS=512; LOADER="--steps 3 --loader-batches 16"; DEVICE=""
  BUDGET=${BUDGET:-420}; LIMIT=${LIMIT:-240}   # seconds: all runs together (the machine's start comes on top), one run
fi
START=$(date +%s)

# Recipe variants (benchmarks/variant.py): compiled backbone, compiled sampler, the loader on latent shards.
"$PY" benchmarks/variant.py $DV "$WORK/dv-compile.yaml" model.init_args.backbone.compile=true
"$PY" benchmarks/variant.py $T2V "$WORK/t2v-compile.yaml" model.init_args.backbone.compile=true
"$PY" benchmarks/variant.py $DV "$WORK/dv-sample-graphs.yaml" sampling.compile=true sampling.compile_mode=reduce-overhead
"$PY" benchmarks/variant.py $DV "$WORK/dv-latents.yaml" "data.init_args.train_shards=$WORK/latents/train-*.tar"

declare -A RUNS=(
  [dv-b8]="--recipe $DV --latents --batch-size $B8 $TRAIN"
  [dv-b8-bench]="--recipe $DV --latents --batch-size $B8 $TRAIN --cudnn-benchmark"
  [dv-b8-cl]="--recipe $DV --latents --batch-size $B8 $TRAIN --channels-last"
  [sample]="--recipe $DV --what sample --batch-size 1 $SAMPLE"
  [sample-graphs]="--recipe $WORK/dv-sample-graphs.yaml --what sample --batch-size 1 $SAMPLE --no-plain"
  [dv-b8-compile]="--recipe $WORK/dv-compile.yaml --latents --batch-size $B8 $COMPILED"
  [t2v-b8-compile]="--recipe $WORK/t2v-compile.yaml --latents --batch-size $B8 $COMPILED"
  [dv-b16-compile]="--recipe $WORK/dv-compile.yaml --latents --batch-size $B16 $COMPILED"
  [t2v-b16-compile]="--recipe $WORK/t2v-compile.yaml --latents --batch-size $B16 $COMPILED"
)
ALL=(tests dv-b8 dv-b8-bench dv-b8-cl sample sample-graphs dv-b8-compile t2v-b8-compile dv-b16-compile t2v-b16-compile)
ORDER=("$@")
if [ ${#ORDER[@]} = 0 ] || [ "${ORDER[0]}" = all ]; then ORDER=("${ALL[@]}"); fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (CPU run)"
  "$PY" -c "import torch, diffusers, lightning; print('torch', torch.__version__, '· diffusers', diffusers.__version__, '· lightning', lightning.__version__)"
  echo "CPU cores: $(nproc)"; } | tee "$WORK/device.txt"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
limit() { local l; l=$(left); [ "$l" -gt "$LIMIT" ] && l=$LIMIT; echo "$l"; }

NAMES=()
for name in "${ORDER[@]}"; do
  t=$(limit)
  if [ "$t" -lt 20 ]; then
    echo "not run: out of the ${BUDGET} s budget" > "$WORK/$name.status"; echo "=== $name: not run (budget)"; NAMES+=("$name"); continue
  fi
  start=$(date +%s)
  if [ "$name" = tests ]; then  # the tests that only a GPU runs (they skip on a CPU)
    echo "=== tests: pytest tests/gpu"
    timeout "$t" "$PY" -m pytest -q -p no:cacheprovider tests/gpu > "$WORK/tests.log" 2>&1
    rc=$?
    tail -n 5 "$WORK/tests.log"
    echo "=== tests: rc $rc, $(( $(date +%s) - start )) s"
    continue
  fi
  args=${RUNS[$name]:-}
  [ -z "$args" ] && { echo "unknown run $name (known: tests ${!RUNS[*]})"; exit 2; }
  NAMES+=("$name")
  loader_pid=""
  if [ "$name" = dv-b8 ]; then
    # The latent-shard loader beside the step: shards of random latents in the recipe's shapes, read by the
    # recipe's data module (its workers) while the step runs on the GPU.
    "$PY" benchmarks/latent_shards.py --recipe $DV --out "$WORK/latents" --clips $CLIPS --shards 8 || true
    # shellcheck disable=SC2086
    timeout "$t" "$PY" -m dv bench --recipe "$WORK/dv-latents.yaml" --what loader --batch-size $B8 $LOADER \
      --json "$WORK/loader-beside.json" > "$WORK/loader-beside.log" 2>&1 &
    loader_pid=$!
  fi
  echo "=== $name: dv bench $args $DEVICE"
  # shellcheck disable=SC2086
  timeout "$t" "$PY" -m dv bench $args $DEVICE --json "$WORK/$name.json" > "$WORK/$name.log" 2>&1
  rc=$?
  grep -v "^\s*$" "$WORK/$name.log" | tail -n 14
  [ $rc = 0 ] || echo "rc $rc$( [ $rc = 124 ] && echo ": over its ${t} s")" > "$WORK/$name.status"
  if [ -n "$loader_pid" ]; then
    wait "$loader_pid"; lrc=$?
    grep -v "^\s*$" "$WORK/loader-beside.log" | tail -n 6
    "$PY" - "$WORK/loader-beside.json" <<'EOF' 2>/dev/null
import json, sys
p = sys.argv[1]; r = json.load(open(p)); r["beside"] = "dv-b8"; json.dump(r, open(p, "w"), indent=2)
EOF
    [ $lrc = 0 ] || echo "rc $lrc" > "$WORK/loader-beside.status"
    NAMES+=(loader-beside)
  fi
  echo "=== $name: rc $rc, $(( $(date +%s) - start )) s; $(left) s of the budget left"
done

"$PY" benchmarks/gpu_table.py "$WORK" "${NAMES[@]}" > "$OUT/table.md"
echo; cat "$WORK/device.txt"; echo; cat "$OUT/table.md"
echo "total $(( $(date +%s) - START )) s"
tar -C "$WORK" -czf "$OUT/runs.tar.gz" --exclude=latents . && rm -rf "$WORK"
