#!/usr/bin/env bash
# Wheels for the GPU machine's Python (3.12, x86_64; torch, lightning, einops, transformers already there; no
# index reachable): what dv imports that its image lacks, pinned as requirements.txt pins them. Run here, where
# pip reaches an index; .whl/ is git-ignored and travels with the call (name it in `carry`); benchmarks/gpu.sh
# installs it into /tmp/site.
#
#   bash benchmarks/gpu_wheels.sh          # then: carry [".whl"], command "bash benchmarks/gpu.sh all"
set -eu
PY=${PYTHON:-python3}
DEST=${DEST:-.whl}
if [ "$DEST" = .whl ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"   # the wheels stay untracked
fi
PLATFORMS=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS="$PLATFORMS --platform $p"
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d "$DEST" \
  diffusers==0.42.1 importlib_metadata \
  open_clip_torch==3.3.0 ftfy wcwidth \
  webdataset==1.0.2 braceexpand \
  av==18.1.0 \
  jsonargparse==4.53.0 docstring-parser typeshed-client
du -sh "$DEST"
