#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md, in one call: `dv bench` runs (dv beside the plain loop) of the full
# recipes with random weights, each under its own time limit, logs and JSON under $OUT (default runs/bench-gpu).
#
#   bash benchmarks/gpu.sh [NAME ...]      # NAME from the list below or `tests` (pytest tests/gpu); none = all
#
# On a machine whose Python lacks dv's requirements, put their wheels in .whl/ first: they are installed
# into /tmp/site (nothing outside it is touched).
set -u
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
LIMIT=${LIMIT:-300}   # seconds per run

declare -A RUNS=(
  [smoke]="--recipe recipes/demo.yaml --steps 3 --warmup 1"
  [t2v-b4]="--recipe recipes/t2v.yaml --batch-size 4 --steps 5 --warmup 2"
  [dreamvideo-b8]="--recipe recipes/dreamvideo.yaml --batch-size 8 --steps 5 --warmup 2"
  [t2v-b4-compile]="--recipe $OUT/t2v-compile.yaml --batch-size 4 --steps 5 --warmup 2"
  [t2v-b4-compile-dv]="--recipe $OUT/t2v-compile.yaml --batch-size 4 --steps 3 --warmup 1 --no-plain"
  [dreamvideo-sample]="--recipe recipes/dreamvideo.yaml --what sample --batch-size 1 --steps 3 --warmup 1"
)
ORDER=(smoke t2v-b4 dreamvideo-b8 dreamvideo-sample)
[ $# -gt 0 ] && ORDER=("$@")

# recipes/t2v.yaml with backbone.compile on (torch.compile of the U-Net)
python3 -c "import sys, yaml; r = yaml.safe_load(open('recipes/t2v.yaml')); r['model']['init_args']['backbone']['compile'] = True; yaml.safe_dump(r, open(sys.argv[1], 'w'))" "$OUT/t2v-compile.yaml"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, diffusers, lightning; print('torch', torch.__version__, '· diffusers', diffusers.__version__, '· lightning', lightning.__version__)" | tee -a "$OUT/device.txt"
for name in "${ORDER[@]}"; do
  if [ "$name" = tests ]; then  # the tests that only a GPU runs
    timeout "$LIMIT" python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -n 15
    continue
  fi
  args=${RUNS[$name]:-}
  [ -z "$args" ] && { echo "unknown run $name (known: ${!RUNS[*]})"; exit 2; }
  echo "=== $name: dv bench $args"
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout "$LIMIT" python3 -m dv bench $args --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  rc=$?
  grep -v "^\s*$" "$OUT/$name.log" | tail -n 16
  echo "=== $name: rc $rc, $(( $(date +%s) - start )) s"
done
