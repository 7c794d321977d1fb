#!/usr/bin/env bash
# Reproduce the shipped default model (foundry_core/weights/default_sceneseg.safetensors) from scratch:
# Point-JEPA teacher on simulated LiDAR scenes -> Foundry-Gate student (s = 16) -> scene segmentation
# fine-tuning -> the same with the LocalShape head -> its descriptors at two metric scales -> sim-to-real
# randomisation -> the compute range widened (p512 .. p32k) -> model card (docs/model_card.md, held-out accuracy and CPU
# latency per operating point). Every step is resumable (re-run the script after an interruption).
# ~3.5 h on 2 CPU cores (steps 4 and 5 ~50 min each).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FOUNDRY_SKIP_ROS=1 bash scripts/install.sh
PY=.venv/bin/python
OUT="${OUT:-runs/default_model}"
step() { echo "[default-model] $*"; }
if [ ! -f "$OUT/teacher/backbone.safetensors" ]; then
  step "1/8 pre-training the teacher"
  $PY -m foundry_core pretrain --config config/default_model/teacher.yaml --set run.out_dir="$OUT/teacher" --resume
fi
if [ ! -f "$OUT/student/student.safetensors" ]; then
  step "2/8 distilling the Foundry-Gate student"
  $PY -m foundry_core distill --config config/default_model/student.yaml --teacher "$OUT/teacher/backbone.safetensors" \
    --set run.out_dir="$OUT/student" --resume
fi
if [ ! -f "$OUT/sceneseg/model.safetensors" ]; then
  step "3/8 fine-tuning for scene segmentation"
  $PY -m foundry_core finetune --config config/default_model/sceneseg.yaml --set init="$OUT/student/student.safetensors" \
    --set run.out_dir="$OUT/sceneseg" --resume
fi
if [ ! -f "$OUT/sceneseg_local_shape/model.safetensors" ]; then
  step "4/8 continuing with the LocalShape head"
  $PY -m foundry_core finetune --config config/default_model/sceneseg_local_shape.yaml \
    --set init="$OUT/sceneseg/model.safetensors" --set run.out_dir="$OUT/sceneseg_local_shape" --resume
fi
if [ ! -f "$OUT/sceneseg_multiscale/model.safetensors" ]; then
  step "5/8 continuing with LocalShape at 0.1 m and 0.3 m scales"
  $PY -m foundry_core finetune --config config/default_model/sceneseg_multiscale.yaml \
    --set init="$OUT/sceneseg_local_shape/model.safetensors" --set run.out_dir="$OUT/sceneseg_multiscale" --resume
fi
if [ ! -f "$OUT/sceneseg_robust/model.safetensors" ]; then
  step "6/8 sim-to-real randomisation (tilt, terrain, beam jitter, three LiDARs), BatchNorm statistics per point"
  $PY -m foundry_core finetune --config config/default_model/sceneseg_robust.yaml \
    --set init="$OUT/sceneseg_multiscale/model.safetensors" --set run.out_dir="$OUT/sceneseg_robust" --resume
fi
if [ ! -f "$OUT/sceneseg_p32k/model.safetensors" ]; then
  step "7/8 the compute range widened: p512 below, p32k (32,768 points) above, 4 epochs"
  $PY -m foundry_core finetune --config config/default_model/sceneseg_p32k.yaml \
    --set init="$OUT/sceneseg_robust/model.safetensors" --set run.out_dir="$OUT/sceneseg_p32k" --resume
fi
step "8/8 model card and shipped weights"
$PY -m foundry_core model-card --model "$OUT/sceneseg_p32k/model.safetensors" \
  --config config/default_model/sceneseg_p32k.yaml \
  --ship foundry_core/weights/default_sceneseg.safetensors --out docs/model_card.md
