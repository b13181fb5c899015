#!/usr/bin/env bash
# Set up timemae in .venv and run the main job on the embedded demo data:
#   1. the demo dataset (RGB + depth videos whose classes differ only in motion, manifests, shards);
#   2. a TIME clip preview of one demo video;
#   3. `deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2` with a small model for a few hundred steps.
# Needs only Python >= 3.10 and the package index; no GPU, no data or weight downloads. About 5 minutes on 2 cores
# after the first install. Output under runs/quickstart (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
OUT=${OUT:-runs/quickstart}
export TIMEMAE_DEMO_DIR="$OUT/demo"
mkdir -p "$OUT"
PATH="$PWD/.venv/bin:$PATH"

echo "== 1. demo data -> $TIMEMAE_DEMO_DIR"
timemae demo --out "$TIMEMAE_DEMO_DIR" --if-missing

echo "== 2. TIME clip preview (N = 2, spatial arrangement) -> $OUT/preview"
video=$(python -c "from data.manifest import read_manifest; print(read_manifest('$TIMEMAE_DEMO_DIR/train.csv')[0].path)")
timemae preview --video "$video" --grid-n 2 --arrangement spatial --num-frames 16 --input-size 224 --out "$OUT/preview"

echo "== 3. pretraining: deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2 (small model, demo shards)"
# On a machine without GPUs DeepSpeed runs one CPU process (gloo); with GPUs, one process per GPU.
deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2 \
  --model vit_tiny --input-size 112 --num-frames 8 --batch-size 8 --num-workers 2 \
  --max-steps 200 --warmup-epochs 2 --base-lr 1e-2 --log-every 20 --save-every 100 --recon-every 50 \
  --output-dir "$OUT/pretrain" "$@"

cat <<MSG

Done. Look at:
  TIME preview           $OUT/preview/sheet.png
  training log           $OUT/pretrain/log.jsonl
  tensorboard            .venv/bin/tensorboard --logdir $OUT/pretrain/tensorboard
                         (scalars: train/*; images: reconstruction/* = original / masked / reconstructed)
  checkpoints            $OUT/pretrain/checkpoints (latest -> newest complete)
  encoder for finetuning $OUT/pretrain/encoder.pth

Fine-tune it on the demo classes (train split, evaluated on the val split):
  TIMEMAE_DEMO_DIR=$TIMEMAE_DEMO_DIR .venv/bin/deepspeed finetune/run.py --init-from $OUT/pretrain/encoder.pth \\
    --model vit_tiny --input-size 112 --num-frames 8 --batch-size 8 --num-workers 2 --max-steps 200 --eval-every 50 \\
    --output-dir $OUT/finetune
MSG
