#!/usr/bin/env bash
# Build the lab-PC bundle: one command, from a source install (torch present, for the export).
#   packaging/build_bundle.sh            -> dist/nmid-desktop/ (nmid-desktop and nmid inside)
# Environment: PYTHON (default: python3 on PATH; the venv's python), NMID_BUNDLE_ENCODER
# (default: efficientnet-lite0-imagenet, the default encoder's network).
# Steps: export the encoder's ONNX graph with its sha256 record (nmid export-graph), render the
# Windows .ico from the SVG, run PyInstaller on packaging/nmid-desktop.spec, refuse a folder
# that holds torch, print its size.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
encoder="${NMID_BUNDLE_ENCODER:-efficientnet-lite0-imagenet}"
graphs="$root/build/bundle-graphs"
export NMID_BUNDLE_GRAPHS="$graphs"
start=$(date +%s)

rm -rf "$graphs"
mkdir -p "$graphs"
# PYTHONPATH: the checkout's package, whatever the venv's install points at.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m nmid_desktop.cli export-graph \
    --encoder "$encoder" --out "$graphs"
QT_QPA_PLATFORM=offscreen "$python" packaging/make_icon.py "$root/build/nmid-desktop.ico"
cp "$root/build/nmid-desktop.ico" packaging/nmid-desktop.ico

PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m PyInstaller --noconfirm --clean \
    --distpath "$root/dist" --workpath "$root/build/pyinstaller" packaging/nmid-desktop.spec

bundle="$root/dist/nmid-desktop"
found=$(find "$bundle" \( -type d \( -name torch -o -name torchvision -o -name triton -o -name nvidia \) \) \
        -o -name 'libtorch*' -o -name 'libc10*' | head -5)
if [ -n "$found" ]; then
    echo "build_bundle: torch found in the bundle:" >&2
    echo "$found" >&2
    exit 1
fi
echo "bundle: $bundle"
du -sh "$bundle"
echo "build time: $(( $(date +%s) - start )) s"
