#!/usr/bin/env bash
# Set up timemae in .venv and run the main job on the embedded demo data.
#   bash launch/quickstart.sh            # output under runs/quickstart
# Needs only Python >= 3.10 and the package registry; no GPU, no downloads of data or weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
TM=.venv/bin/timemae

echo "== demo data (RGB + depth videos whose classes differ only in motion, manifests, shards)"
$TM demo --out "$OUT/demo"

echo "== TIME clip preview (N = 2, spatial arrangement) of one demo video"
video=$(.venv/bin/python -c "from data.manifest import read_manifest; print(read_manifest('$OUT/demo/train.csv')[0].path)")
$TM preview --video "$video" --grid-n 2 --arrangement spatial --num-frames 16 --input-size 224 --out "$OUT/preview"

echo
echo "Demo data:    $OUT/demo (train.csv, val.csv, shards/)"
echo "TIME preview: $OUT/preview/sheet.png"
