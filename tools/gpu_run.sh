#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in one call on a lent GPU machine (about 7 minutes on one H100):
#   1. versions (driver, GPU, torch, DeepSpeed);
#   2. bench-step, VideoMAE ViT-B pretraining step at batch 32 / 64 / 128, eager and --compile, bf16, with MFU;
#   3. bench-step, ResNet-50 TSN + each temporal module at batch 32, bf16 (the backbones' GPU table);
#   4. the real trainer, `deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2` (ViT-B, batch 32, bf16, demo data)
#      for 60 steps at ZeRO 0 and ZeRO 2, with clips/s, mfu and data wait from its log;
#   5. the real fine-tuning trainer for 30 steps, VideoMAE ViT-B and ResNet-50 TSN + TRM (step times, from which the
#      protocols' per-training times on 8 GPUs follow);
#   6. bench-loader's real multi-worker loader rows (4, 8, 12 workers);
#   7. the CUDA tests.
# Output: $OUT (default gpu_out/): one .txt per part, the training run folders, summary.txt (the trainer's figures).
# DRY=1 runs the same commands at toy sizes on the CPU, which is how the script is tested (tests/test_gpu_script.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=.venv/bin/python
if [ "${DRY:-0}" = 1 ]; then
  VIT=(--model vit_tiny --input-size 32 --num-frames 4 --batch-size 2)
  RESNET=(--model resnet18 --input-size 32 --num-frames 4 --batch-size 2)
  TRAIN=(--model vit_tiny --input-size 32 --num-frames 4 --batch-size 2 --num-workers 1 --max-steps 2 --log-every 1)
  ZERO=(0)
  LOADER=(--quick --no-reencode --grid-n 2 --samples-per-decode 2 --loader-workers 1 --loader-batch 2 --loader-seconds 1)
  REPEATS=(--repeats 1 --warmup 1)
  FT_VIT=(--model vit_tiny --input-size 32 --num-frames 4 --batch-size 2 --num-workers 1 --max-steps 2)
  FT_RESNET=(--model resnet18 --temporal trm --input-size 32 --num-frames 4 --batch-size 2 --num-workers 1 --max-steps 2)
else
  VIT=(--model vit_base --input-size 224 --num-frames 16 --batch-size 32 64 128)
  RESNET=(--model resnet50 --batch-size 32)
  TRAIN=(--model vit_base --batch-size 32 --num-workers 12 --max-steps 60 --log-every 10)
  ZERO=(0 2)
  LOADER=(--no-reencode --grid-n 2 --samples-per-decode 2 --clips 5 --loader-workers 4 8 12 --loader-seconds 15)
  REPEATS=(--repeats 5 --warmup 2)
  FT_VIT=(--model vit_base --batch-size 8 --num-workers 12 --max-steps 30)
  FT_RESNET=(--model resnet50 --temporal trm --num-frames 8 --batch-size 8 --num-workers 12 --max-steps 30)
fi

part() {  # part NAME COMMAND...: run it under a time limit, keep its output, show its tail
  local name=$1 start rc
  shift
  echo "== $name: $*"
  start=$(date +%s)
  timeout "${LIMIT:-240}" "$@" >"$OUT/$name.txt" 2>&1
  rc=$?
  echo "   exit $rc after $(($(date +%s) - start)) s"
  tail -n 20 "$OUT/$name.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', \
deepspeed.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} >"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
part bench_step_vit "$PY" -m launch.cli bench-step "${VIT[@]}" --mask-ratio 0.75 --attention sdpa --checkpointing off \
  --compile off on --in-process "${REPEATS[@]}"
part bench_step_resnet "$PY" -m launch.cli bench-step "${RESNET[@]}" --temporal none tsm stw trm atr --in-process \
  "${REPEATS[@]}"
for z in "${ZERO[@]}"; do
  part "train_zero$z" .venv/bin/deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2 "${TRAIN[@]}" \
    --zero-stage "$z" --save-every 100000 --output-dir "$OUT/train_zero$z"
done
for ft in vit resnet; do
  declare -n FT="FT_${ft^^}"
  part "finetune_$ft" .venv/bin/deepspeed finetune/run.py "${FT[@]}" --log-every 5 --eval-every 100000 \
    --save-every 100000 --output-dir "$OUT/finetune_$ft"
done
part bench_loader "$PY" -m launch.cli bench-loader "${LOADER[@]}"
part cuda_tests "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
"$PY" - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, json, os, statistics, sys
for log in sorted(glob.glob(os.path.join(sys.argv[1], "*", "log.jsonl"))):
    recs = [r for r in map(json.loads, open(log)) if r.get("kind", "train") == "train" and r["step"] > 5]
    recs = recs or [r for r in map(json.loads, open(log)) if r.get("kind", "train") == "train"]
    def med(key):
        vals = [r[key] for r in recs if r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")
    wait = med("data_wait_s") / med("step_time_s") if recs else float("nan")
    print(f"{os.path.basename(os.path.dirname(log))}: clips/s {med('clips_per_s'):.1f}, mfu {med('mfu'):.3f}, "
          f"step {med('step_time_s'):.3f} s, data wait {100 * wait:.1f} % of the step, "
          f"max_mem_gib {med('max_mem_gib'):.1f} ({len(recs)} records)")
PY
