#!/usr/bin/env bash
# nnU-Net v2 2-D baseline on a verified sample build, scored by our evaluator on the same test crops.
#
#   scripts/nnunet_baseline.sh BUILD WORK [TRAINER] [RUN]
#
# BUILD    a `softmask build` / `make lnsm` folder (verified by the export)
# WORK     working folder: nnUNet_raw, nnUNet_preprocessed, nnUNet_results, predictions, eval
# TRAINER  nnU-Net trainer class (default nnUNetTrainer_5epochs; nnUNetTrainer_1epoch for a smoke run)
# RUN      a label for the repetition (nnU-Net has no seed option: repeated runs stand in for seeds;
#          default 0). Each RUN trains into its own results folder.
#
# Steps: `softmask export nnunet --splits-final` (fold 0 = our train / val split), plan and
# preprocess the 2d configuration, train fold 0 on CPU (with --npz: nnU-Net's final validation keeps
# the probabilities of our val crops), predict the test crops with --save_probabilities, put the val
# probabilities beside them, then `dsnet evaluate --predictions --val-split val`: Dice/SEN/PPV per crop
# at 0.5 and at the threshold chosen on val against the label (as for our runs), and on a build with
# the phantom's truth the truth-scored columns (dice_true_tval, sad_true, ...) the truth tables read.
# Finished steps are skipped (marker files), so the script can be re-run after an interruption.
# Environment: DEVICE (default cpu), DATASET_ID (default 501), NP (processes, default 1), BIN
# (folder of the softmask/dsnet console scripts, default .venv/bin), NNUNET_BIN (folder of the
# nnUNetv2_* scripts, default $BIN; `make nnunet-baseline` uses .venv-nnunet/bin: nnU-Net needs a
# torchvision that matches its torch, which the CPU torch wheel of .venv has none of), EVAL_OUT (the
# report folder, default $WORK/eval/run$RUN-$TRAINER; the truth study writes it into its record).
# TRAINER=nnUNetTrainer_Steps (scripts/nnunet_steps_trainer.py, NNUNET_TOTAL_STEPS) is copied into
# nnU-Net's package first, where nnU-Net looks for trainers by name.
set -euo pipefail
BUILD=${1:?usage: scripts/nnunet_baseline.sh BUILD WORK [TRAINER] [RUN]}
WORK=${2:?usage: scripts/nnunet_baseline.sh BUILD WORK [TRAINER] [RUN]}
TRAINER=${3:-nnUNetTrainer_5epochs}
RUN=${4:-0}
DEVICE=${DEVICE:-cpu}
DATASET_ID=${DATASET_ID:-501}
NP=${NP:-1}
BIN=${BIN:-.venv/bin}
NNUNET_BIN=${NNUNET_BIN:-$BIN}
NAME=LNSM
DS=$(printf 'Dataset%03d_%s' "$DATASET_ID" "$NAME")

export nnUNet_raw="$WORK/nnUNet_raw"
export nnUNet_preprocessed="$WORK/nnUNet_preprocessed"
export nnUNet_results="$WORK/nnUNet_results/run$RUN"
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-0}   # data augmentation in the main process (CPU, small data)
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
step() { echo "[nnunet_baseline $(date -u +%H:%M:%S)] $*" >&2; }

if [ ! -f "$WORK/.exported" ]; then
  step "export $BUILD -> $nnUNet_raw/$DS"
  "$BIN/softmask" export nnunet "$BUILD" --dataset-id "$DATASET_ID" --name "$NAME" --out "$nnUNet_raw" \
      --splits-final --preprocessed "$nnUNet_preprocessed" --overwrite > "$WORK/export.json"
  touch "$WORK/.exported"
fi
if [ ! -f "$WORK/.preprocessed" ]; then
  step "plan and preprocess (2d)"
  # nnU-Net writes splits_final.json only when absent: the export's fold 0 (our train / val) stays.
  # the planner calls torch.set_num_threads(nnUNet_n_proc_DA), which must be >= 1
  nnUNet_n_proc_DA=1 "$NNUNET_BIN/nnUNetv2_plan_and_preprocess" -d "$DATASET_ID" -c 2d -np "$NP" --verify_dataset_integrity
  touch "$WORK/.preprocessed"
fi
MARK="$nnUNet_results/.trained-$TRAINER"
if [ ! -f "$MARK" ]; then
  if [ "$TRAINER" = nnUNetTrainer_Steps ]; then
    NNDIR=$("$NNUNET_BIN/python" -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))')
    cp "$(dirname "$0")/nnunet_steps_trainer.py" "$NNDIR/training/nnUNetTrainer/variants/"
    step "nnUNetTrainer_Steps: NNUNET_TOTAL_STEPS=${NNUNET_TOTAL_STEPS:-3810}"
  fi
  # a run cut off after a checkpoint (nnUNetTrainer_Steps writes one every epoch) goes on with --c
  CONT=()
  [ -f "$nnUNet_results/$DS/${TRAINER}__nnUNetPlans__2d/fold_0/checkpoint_latest.pth" ] && CONT=(--c)
  step "train fold 0 with $TRAINER on $DEVICE (run $RUN)${CONT:+, continuing from its latest checkpoint}"
  "$NNUNET_BIN/nnUNetv2_train" "$DATASET_ID" 2d 0 -tr "$TRAINER" -device "$DEVICE" --npz "${CONT[@]}"
  touch "$MARK"
fi
PRED="$WORK/predictions/run$RUN-$TRAINER"
if [ ! -f "$PRED/.done" ]; then
  step "predict the test crops -> $PRED"
  "$NNUNET_BIN/nnUNetv2_predict" -i "$nnUNet_raw/$DS/imagesTs" -o "$PRED" -d "$DATASET_ID" -c 2d -f 0 -tr "$TRAINER" \
      --save_probabilities -device "$DEVICE" -npp "$NP" -nps "$NP"
  touch "$PRED/.done"
fi
# nnU-Net's final validation (fold 0 = our val split) with --npz: the val probabilities, for the threshold
VALID="$nnUNet_results/$DS/${TRAINER}__nnUNetPlans__2d/fold_0/validation"
VAL_SPLIT=""
if compgen -G "$VALID/*.npz" > /dev/null; then
  cp "$VALID"/*.npz "$PRED/"
  VAL_SPLIT=val
fi
step "score with dsnet evaluate --predictions (val split: ${VAL_SPLIT:-none})"
"$BIN/dsnet" evaluate --predictions "$PRED" --cases "$nnUNet_raw/$DS/cases.csv" --data "$BUILD" --val-split "$VAL_SPLIT" \
    --name "nnunet-2d-$TRAINER-run$RUN" --out "${EVAL_OUT:-$WORK/eval/run$RUN-$TRAINER}"
