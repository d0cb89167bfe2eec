#!/usr/bin/env bash
# Smoke test of the BUILT lab-PC bundle, offscreen, in throwaway user folders:
#   packaging/smoke_test.sh [BUNDLE_DIR]     (default: dist/nmid-desktop)
# 1. no torch in the folder; 2. nmid builds the demo library, classifies one image (engine and
# device logged by -v), and refuses training naming the full install; 3. the window opens the
# demo library offscreen, shows a local prediction for the same image, and exits 0. Exit status 0 when all pass.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$(cd "${1:-$root/dist/nmid-desktop}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export NMID_CONFIG_DIR="$work/config" NMID_DATA_DIR="$work/data" NMID_CACHE_DIR="$work/cache"
export QT_QPA_PLATFORM=offscreen
# Nothing from a source install may leak in: the frozen executables must stand alone.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

echo "== 1. no torch inside $bundle"
found=$(find "$bundle" \( -type d \( -name torch -o -name torchvision -o -name triton -o -name nvidia \) \) \
        -o -name 'libtorch*' -o -name 'libc10*' -o -name 'libcudnn*' | head -5)
[ -z "$found" ] || fail "torch in the bundle: $found"
graph=$(find "$bundle" -name 'efficientnet-lite0-imagenet.onnx' | head -1)
[ -n "$graph" ] && [ -f "$graph.json" ] || fail "no shipped graph with its record"
echo "ok: no torch; graph $(basename "$graph") with $(basename "$graph").json; $(du -sh "$bundle" | cut -f1) in all"

echo "== 2. nmid: demo library, classify one image, training refused"
"$bundle/nmid" --version
"$bundle/nmid" demo --library "$work/demo" --per-class 8
# A query image the library has never seen: another seed's demo image.
"$bundle/nmid" demo --library "$work/query" --per-class 1 --seed 7 >/dev/null
image=$(find "$work/query/images" -type f | sort | head -1)
[ -n "$image" ] || fail "no query image"
"$bundle/nmid" -v classify --library "$work/demo" "$image" 2>&1 | grep -v "^DEBUG PIL" | tee "$work/classify.txt"
grep -qi "onnxruntime" "$work/classify.txt" || fail "classify did not report the onnxruntime engine"
set +e
"$bundle/nmid" train --library "$work/demo" --epochs 1 >"$work/train.txt" 2>&1
code=$?
set -e
cat "$work/train.txt"
[ "$code" -ne 0 ] || fail "training ran without torch?"
grep -q "full install" "$work/train.txt" || fail "the training refusal does not name the full install"
grep -q "Traceback" "$work/train.txt" && fail "training refusal is a traceback"

echo "== 3. nmid-desktop: the window, offscreen, on the demo library with the same image"
set +e
NMID_SMOKE_QUIT_MS="${NMID_SMOKE_QUIT_MS:-30000}" timeout 120 "$bundle/nmid-desktop" --library "$work/demo" "$image" \
    >"$work/gui.txt" 2>&1
code=$?
set -e
cat "$work/gui.txt"
[ "$code" -eq 0 ] || fail "nmid-desktop exited with $code"
grep -q "^window: " "$work/gui.txt" || fail "the window did not report"
grep -q '^local prediction: .*<b>' "$work/gui.txt" || fail "the window shows no local prediction"
grep -q "Traceback" "$work/gui.txt" && fail "a traceback in the window's output"
echo "smoke: all passed"
