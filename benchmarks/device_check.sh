#!/usr/bin/env bash
# GPU check (run on a lent CUDA machine): QAT training on CUDA, deterministic resume on CUDA,
# a CUDA checkpoint evaluated on the CPU, and the QAT overhead benchmark on the GPU.
# Usage: bash benchmarks/device_check.sh OUTDIR
set -euo pipefail
out=${1:-/tmp/device_check}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
common=(-a resnet20_cifar --dataset digits -b 64 --lr 0.1 --compress schedules/quant_aware_train_8bit.yaml --deterministic -p 0 -o "$out/runs")
$py apps/compress_classifier.py "${common[@]}" --epochs 4 -n whole | grep -E "Top1|Quantization:|Run folder"
$py apps/compress_classifier.py "${common[@]}" --epochs 2 -n half | grep -E "==> Top1" | tail -1
$py apps/compress_classifier.py "${common[@]}" --epochs 4 -n rest --resume-from "$out"/runs/half___*/checkpoint.pth.tar | grep -E "Resumed|==> Top1" | tail -2
$py - "$out" <<'PY'
import glob, json, sys, torch
out = sys.argv[1]
a = torch.load(glob.glob(f"{out}/runs/whole___*/checkpoint.pth.tar")[0], weights_only=True)
b = torch.load(glob.glob(f"{out}/runs/rest___*/checkpoint.pth.tar")[0], weights_only=True)
diff = max((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item()
           for k in a["state_dict"] if torch.is_tensor(a["state_dict"][k]))
sa = json.load(open(glob.glob(f"{out}/runs/whole___*/summary.json")[0]))["test"]
sb = json.load(open(glob.glob(f"{out}/runs/rest___*/summary.json")[0]))["test"]
print(f"CUDA resume: max abs weight difference {diff:.3g}; test top-1 whole {sa['top1']:.3f} resumed {sb['top1']:.3f}")
PY
$py apps/compress_classifier.py -a resnet20_cifar --dataset digits --cpu --evaluate -b 64 -p 0 -o "$out/runs" -n cpu_eval \
    --resume-from "$out"/runs/whole___*/checkpoint.pth.tar | grep "==> Top1"
$py benchmarks/qat_overhead.py --epochs 3 -b 64 --out "$out/qat_overhead_cuda.json" 2>&1 | tail -8 || true
