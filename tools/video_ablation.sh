#!/usr/bin/env bash
# MaMMUT video ablation (Kuo et al. 2023, Table 9's arms) at laptop scale: full model, without the
# gated connection, without the fixed 3D embeddings, without tubes (frames only), and a
# single-middle-frame baseline; each initialised from an image MaMMUT run, then eval retrieval.
#   tools/video_ablation.sh DATA_ROOT IMAGE_RUN OUT_DIR "SEEDS" STEPS
# e.g. tools/video_ablation.sh data/emoji-video runs/mammut-s0 runs/video-ablation "0 1 2" 150
set -euo pipefail
data=$1; init=$2; out=$3; seeds=${4:-"0 1 2"}; steps=${5:-150}
mmtlab=${MMTLAB:-mmtlab}
declare -A arms=(
  [full]=""
  [no_gate]="--set model.video.gate=false"
  [no_fixed_pos]="--set model.video.fixed_pos=false"
  [frames_only]="--set model.video.tubes=[]"
  [middle_frame]="--set model.video.tubes=[] --set model.video.frame_stride=8 --set model.video.frame_start=4"
)
for seed in $seeds; do
  for arm in full no_gate no_fixed_pos frames_only middle_frame; do
    run=$out/$arm-s$seed
    if [ ! -f "$run/eval/retrieval.json" ]; then
      # shellcheck disable=SC2086
      $mmtlab train configs/runs/mammut-video.yaml --out "$run" --set seed="$seed" --set data.root="$data" \
        --set train.init_from="$init" --set train.steps="$steps" --set train.threads=1 ${arms[$arm]}
      $mmtlab eval retrieval "$run" --split test
    fi
  done
done
