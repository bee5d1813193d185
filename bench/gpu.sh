#!/usr/bin/env bash
# The GPU benchmark in one run (bench/gpu.py): 2D keyframe at 512² and 1024² (fp32/fp16),
# Open3D CUDA TSDF, MinkUNet18A forward + training step at 200k voxels, query at 1M voxels.
# Writes gpu.json + gpu.md into OUT_DIR (default bench/results) after every section, so a run
# cut short still leaves its figures. Whole run: a few minutes on one H100/H200-class GPU.
#
#   bench/gpu.sh [OUT_DIR] [-- extra bench.gpu arguments, e.g. --only keyframe,net3d]
#
# On a bare machine without the project's dependencies, put wheels (and *.tar.xz archives of
# an installed site-packages tree, for wheels too large to copy as they are) into .whl/: they
# are installed into $D2S_SITE (default /tmp/site) first. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
[ "$#" -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if compgen -G ".whl/*" >/dev/null; then
    site="${D2S_SITE:-/tmp/site}"
    mkdir -p "$site"
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl
    fi
    for archive in .whl/*.tar.xz; do
        if [ -e "$archive" ]; then tar -xJf "$archive" -C "$site"; fi
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed .whl/ into $site"
fi
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}"

# Fail fast: no GPU, or a dependency that does not import, costs seconds, not a whole run.
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
"$py" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
import diffusers, open_clip  # noqa: E401,F401  (the 2D model needs both)

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("open3d", "spconv.pytorch"):
    try:
        __import__(name)
        print(name, "imports")
    except Exception as exc:  # reported, not fatal: the benchmark records it as not measured
        print(name, "does not import:", type(exc).__name__, exc)
EOF

"$py" -m bench.gpu --out "$out" "$@"
