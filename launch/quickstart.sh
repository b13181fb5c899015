#!/usr/bin/env bash
# Set up timemae in .venv and run the main job on the embedded demo data:
#   1. the demo dataset (RGB + depth videos whose classes differ only in motion, manifests, shards);
#   2. a TIME clip preview of one demo video;
#   3. `deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2` with a small model (vit_mini: two blocks) for 800
#      steps, then the mean norm-pix loss of its first and last 10 logged steps;
#   4. fine-tuning of the encoder it exported on the demo classes, then top-1 next to chance.
# Needs only Python >= 3.10 and the package index; no GPU, no data or weight downloads. About 5 minutes on 2 cores
# after the first install. Output under runs/quickstart (override with OUT=...). Flags given to this script go to the
# pretraining; FT_STEPS sets the fine-tuning's length (default 400).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
OUT=${OUT:-runs/quickstart}
FT_STEPS=${FT_STEPS:-400}
export TIMEMAE_DEMO_DIR="$OUT/demo"
mkdir -p "$OUT"
PATH="$PWD/.venv/bin:$PATH"
# CPU linear layers through oneDNN (models/linear.py; opt-in, off by default, never used on CUDA).
export TIMEMAE_CPU_LINEAR=${TIMEMAE_CPU_LINEAR:-onednn}

echo "== 1. demo data -> $TIMEMAE_DEMO_DIR"
timemae demo --out "$TIMEMAE_DEMO_DIR" --if-missing

echo "== 2. TIME clip preview (N = 2, spatial arrangement) -> $OUT/preview"
video=$(python -c "from data.prep.manifest import read_manifest; print(read_manifest('$TIMEMAE_DEMO_DIR/train.csv')[0].path)")
timemae preview --video "$video" --grid-n 2 --arrangement spatial --num-frames 16 --input-size 224 --out "$OUT/preview"

echo "== 3. pretraining: deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2 (small model, demo shards)"
# On a machine without GPUs DeepSpeed runs one CPU process (gloo); with GPUs, one process per GPU.
deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2 \
  --model vit_mini --input-size 112 --num-frames 8 --batch-size 8 --num-workers 2 \
  --max-steps 800 --warmup-epochs 6 --base-lr 5e-2 --log-every 10 --save-every 400 --recon-every 200 \
  --output-dir "$OUT/pretrain" "$@"
python - "$OUT/pretrain/log.jsonl" <<'PY'
import json, sys
losses = [r["loss"] for r in map(json.loads, open(sys.argv[1])) if r.get("kind", "train") == "train"]
k = min(10, len(losses) // 2) or 1
first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
print(f"pretraining loss (norm-pix): mean of the first {k} logged steps {first:.4f}, of the last {k} {last:.4f}, "
      f"ratio {last / first:.3f} ({100 * (1 - last / first):.1f} % lower); predicting zeros costs about 1.0")
PY

echo "== 4. fine-tuning the exported encoder on the demo classes (train split, evaluated on the val split)"
# A short-run recipe: the VideoMAE one (base lr 1e-3 with layer decay, mixup, cutmix, RandAugment) needs far more
# steps than a quickstart has.
FT=(deepspeed finetune/run.py --init-from "$OUT/pretrain/encoder.pth" --model vit_mini --input-size 112 --num-frames 8
    --batch-size 8 --num-workers 2 --max-steps "$FT_STEPS" --eval-every 100 --base-lr 5e-2 --layer-decay 1
    --mixup 0 --cutmix 0 --rand-augment none --reprob 0 --output-dir "$OUT/finetune")
"${FT[@]}"
python - "$OUT/finetune/metrics.json" "$TIMEMAE_DEMO_DIR/classes.txt" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
classes = [line for line in open(sys.argv[2]).read().splitlines() if line]
print(f"fine-tuned top-1 {metrics['top1']:.3f} on {metrics['num_videos']} val videos "
      f"(chance {1 / len(classes):.3f}; mean class accuracy {metrics['mean_class_acc']:.3f})")
PY

cat <<MSG

Done. Look at:
  TIME preview           $OUT/preview/sheet.png
  training log           $OUT/pretrain/log.jsonl
  tensorboard            .venv/bin/tensorboard --logdir $OUT/pretrain/tensorboard
                         (scalars: train/*; images: reconstruction/honest = original / masked / target / prediction /
                         reconstruction, also as PNG in $OUT/pretrain/reconstructions)
  checkpoints            $OUT/pretrain/checkpoints (latest -> newest complete)
  encoder for finetuning $OUT/pretrain/encoder.pth
  fine-tuning            $OUT/finetune (metrics.json, reports/, best.pth)

Fine-tune it again, longer or with other flags (train split, evaluated on the val split):
  TIMEMAE_DEMO_DIR=$TIMEMAE_DEMO_DIR .venv/bin/deepspeed finetune/run.py --init-from $OUT/pretrain/encoder.pth \\
    --model vit_mini --input-size 112 --num-frames 8 --batch-size 8 --num-workers 2 --max-steps 2000 --eval-every 200 \\
    --base-lr 5e-2 --layer-decay 1 --mixup 0 --cutmix 0 --rand-augment none --reprob 0 --output-dir $OUT/finetune_more
MSG
