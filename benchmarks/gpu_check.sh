#!/bin/sh
# Issue 16's GPU check in one go, on a machine with CUDA (about 6 minutes on one H200):
#   1. the tests that skip without CUDA (fine-tunes on the device in every precision, masks,
#      codebooks and fake quantizers brought back to the CPU);
#   2. benchmarks/bench_device.py: fine-tune seconds per epoch, CPU vs CUDA (DataLoader, sliced, bf16);
#   3. a LeNet-5 "fastest" search (bench_fastest.py, 100 s) whose fine-tunes run on the GPU
#      ("auto" device) while every latency is still measured on ONNX Runtime on the CPU.
# Logs and tables go to $OUT (default /tmp/gpu-check).   sh benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'ort', onnxruntime.__version__)" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.log"
timeout 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_train_batches.py tests/test_search_device.py \
    tests/test_search_budget.py tests/test_bench_device.py tests/test_search_seeds.py -k "cuda or bf16 or precision or bench_device or epoch_seconds" 2>&1 | tee "$OUT/tests.log"
timeout 200 $PY benchmarks/bench_device.py --out "$OUT/device.json" > "$OUT/device.md" 2> "$OUT/device.err"
echo "bench_device rc=$?"; cat "$OUT/device.md"; tail -3 "$OUT/device.err"
timeout 220 $PY benchmarks/bench_fastest.py --models lenet5 --time-limit 100 -v --out /tmp/gpu-check-fastest \
    > "$OUT/fastest.md" 2> "$OUT/fastest.err"
echo "bench_fastest rc=$?"; cat "$OUT/fastest.md"; grep -c "fine-tun" "$OUT/fastest.err"; tail -3 "$OUT/fastest.err"
