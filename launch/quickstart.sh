#!/usr/bin/env bash
# Set up timemae in .venv and run the main job on the embedded demo data:
#   1. the demo dataset (RGB videos whose classes differ only in motion, manifests, shards; 512 + 128 videos);
#   2. a TIME clip preview of one demo video;
#   3. `deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2` with a small model (vit_mini: two blocks) for 1200
#      steps, then the mean norm-pix loss of its first and last 10 logged steps;
#   4. fine-tuning of the encoder it exported on the demo classes, then top-1 next to chance.
# Needs only Python >= 3.10 and the package index; no GPU, no data or weight downloads. About 8 minutes on 2 cores
# after the first install. Output under runs/quickstart (override with OUT=...). Flags given to this script go to the
# pretraining; PT_STEPS and FT_STEPS set the two stages' lengths (defaults 1200 and 1400).
# Geometry: 128 px with N = 2 makes each TIME cell 64 px, four 16-px patches wide, so no patch straddles two cells
# (at 112 px a cell is 3.5 patches wide). 512 training videos: from 256 the fine-tuning memorised them instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
OUT=${OUT:-runs/quickstart}
PT_STEPS=${PT_STEPS:-1200}
FT_STEPS=${FT_STEPS:-1400}
export TIMEMAE_DEMO_DIR="$OUT/demo"
mkdir -p "$OUT"
PATH="$PWD/.venv/bin:$PATH"
# The launcher's rendezvous port: a free one unless MASTER_PORT is set, so that a quickstart runs beside another
# deepspeed job on the same machine (the launcher's default, 29500, would clash).
PORT=${MASTER_PORT:-$(python -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")}
# CPU linear layers through oneDNN (models/linear.py; opt-in, off by default, never used on CUDA).
export TIMEMAE_CPU_LINEAR=${TIMEMAE_CPU_LINEAR:-onednn}

echo "== 1. demo data -> $TIMEMAE_DEMO_DIR"
# DEMO_FLAGS: the demo's size (the tests give "" to reuse a default demo).
timemae demo --out "$TIMEMAE_DEMO_DIR" --if-missing ${DEMO_FLAGS---videos-per-class 64 --val-per-class 16 --no-depth}

echo "== 2. TIME clip preview (N = 2, spatial arrangement) -> $OUT/preview"
video=$(python -c "from data.prep.manifest import read_manifest; print(read_manifest('$TIMEMAE_DEMO_DIR/train.csv')[0].path)")
timemae preview --video "$video" --grid-n 2 --arrangement spatial --num-frames 4 --input-size 128 --out "$OUT/preview"

echo "== 3. pretraining: deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2 (small model, demo shards)"
# On a machine without GPUs DeepSpeed runs one CPU process (gloo); with GPUs, one process per GPU.
deepspeed --master_port "$PORT" pretrain/run.py --mask-ratio 0.75 --grid-n 2 \
  --model vit_mini --input-size 128 --num-frames 4 --batch-size 8 --num-workers 2 \
  --max-steps "$PT_STEPS" --warmup-epochs 1.5 --base-lr 5e-2 --log-every 10 --save-every 600 --recon-every 400 \
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
# A short-run recipe: the VideoMAE one (base lr 1e-3 with layer decay, drop path, label smoothing, mixup, cutmix,
# RandAugment, random erasing) needs far more steps than a quickstart has. Two TIME frames of 2 x 2 cells: eight
# moments of the video, half the pretraining's tokens per clip.
FT_FLAGS=(--model vit_mini --input-size 128 --num-frames 2 --batch-size 16 --num-workers 2
          --base-lr 8e-3 --min-lr 0 --warmup-epochs 1.5 --layer-decay 1 --drop-path 0 --label-smoothing 0
          --mixup 0 --cutmix 0 --rand-augment none --reprob 0 --train-crop multiscale)
FT=(deepspeed --master_port "$PORT" finetune/run.py --init-from "$OUT/pretrain/encoder.pth" "${FT_FLAGS[@]}"
    --max-steps "$FT_STEPS" --eval-every 500 --output-dir "$OUT/finetune")
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

Fine-tune it again, longer or with other flags (train split, evaluated on the val split; without --init-from, the
same from scratch, the comparison in README's quickstart section):
  TIMEMAE_DEMO_DIR=$TIMEMAE_DEMO_DIR .venv/bin/deepspeed --master_port $PORT finetune/run.py \\
    --init-from $OUT/pretrain/encoder.pth \\
    ${FT_FLAGS[*]} \\
    --max-steps 3000 --eval-every 500 --output-dir $OUT/finetune_more
MSG
