#!/usr/bin/env bash
# Embedding images/s on a GPU machine (prepared for one H200): single-process against Ray Data,
# the same figures benchmarks/million_index.py --embed prints on a CPU.
#
# Usage: benchmarks/gpu_embed.sh [LIBRARY] [NUM_CPUS]
#   LIBRARY   a library folder to copy and embed (default: a fresh 1,000-image demo library)
#   NUM_CPUS  CPUs of the local Ray (default: all cores); the GPUs are found by Ray itself
# Needs: nmid-desktop with the cluster extra (pip install -e .[cluster]), CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LIB=${1:-}
CPUS=${2:-$(nproc)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: not a GPU machine?"
$PY -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| ray', ray.__version__)"
if [ -z "$LIB" ]; then
  LIB="$WORK/demo"
  PYTHONPATH=$PWD $PY -m nmid_desktop.cli demo --library "$LIB" --per-class 200 >/dev/null
fi
for ENCODER in efficientnet-lite0-imagenet+d4 efficientnet-lite0-imagenet; do
  echo "== encoder $ENCODER, library $LIB, local Ray with $CPUS CPUs =="
  PYTHONPATH=$PWD $PY benchmarks/million_index.py --embed "$LIB" --encoder "$ENCODER" --num-cpus "$CPUS" --engines local ray
done
