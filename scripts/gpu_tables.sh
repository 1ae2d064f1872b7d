#!/usr/bin/env bash
# Tables III-V and the Soft Mask L1 study in the paper's `upscale` teacher mode, on a GPU machine,
# resumable across calls through a record folder that is committed to the repository.
#
#   scripts/gpu_tables.sh [RECORD]          # default RECORD: docs/results/tables1500-upscale
#
# Steps: build the LNSM-size hybrid sample (make lnsm N=1500), the SR teacher on the patients of its
# train split (as `make pretrain-sr`), the GPU speed figures of the trainer issue (item 7, first
# call only), then `scripts/run_tables.py --study l1 --jobs JOBS --record RECORD`: every row of
# Tables III-V and the six L1 cells, seed by seed; runs already in RECORD are skipped, and no new
# run starts after BUDGET_S seconds, so a call ends inside its limit and the next call goes on.
# With OUT set (the device tool's output folder) RECORD and the speed figures are tarred into
# $OUT/gpu_tables.tgz: unpack it in the repository (tar xzf) and commit RECORD.
#
# Environment: PY (a python with CUDA torch and the packages of pyproject.toml; default python3 --
# the packages themselves run from this tree through PYTHONPATH), DEVICE (cuda), JOBS (runs at once,
# default 8), THREADS (CPU threads a run, default 2), N (1500), EPOCHS (30: the schedule of the CPU
# rows), BUDGET_S (seconds of the call after which no run starts, setup included; default 420, 0 = none), WORK (build/gpu), EXTRA (more run_tables arguments, e.g. -s KEY=V).
set -euo pipefail
RECORD=${1:-docs/results/tables1500-upscale}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-8}
THREADS=${THREADS:-2}
N=${N:-1500}
EPOCHS=${EPOCHS:-30}
BUDGET_S=${BUDGET_S:-420}
WORK=${WORK:-build/gpu}
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
SOFTMASK="$PY -m softmask_builder.cli"
DSNET="$PY -m dsnet_trainer.cli"
LNSM=$WORK/lnsm$N
mkdir -p "$WORK" "$RECORD"
t0=$SECONDS

[ -f "$LNSM/manifest.json" ] || $SOFTMASK make-lnsm --out "$LNSM" --n "$N" --jobs "$(nproc)" --phantom hybrid
if [ ! -f "$WORK/sr/teacher.pt" ]; then
    $SOFTMASK phantom --kind hybrid --n 60 --out "$WORK/sr-source" > /dev/null
    $SOFTMASK build slices "$WORK/sr-source" --recipe slices --out "$WORK/sr-slices" --no-progress --overwrite > /dev/null
    $DSNET pretrain-sr --data "$WORK/sr-slices" --out "$WORK/sr" --config sr_tiny --train-patients-from "$LNSM" \
        --device "$DEVICE" --no-progress
fi
if [ "$DEVICE" != cpu ] && [ ! -f "$RECORD/gpu_speed.txt" ]; then
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
      $PY benchmarks/gpu_check_sr.py --steps 20
      for preset in tiny paper; do
          $PY benchmarks/bench_inference.py --device "$DEVICE" --preset $preset --batch 256 --repeats 20; done
    } > "$RECORD/gpu_speed.txt" 2>&1 || true
fi
setup=$((SECONDS - t0))
echo "setup: $setup s" >&2
stop_after=0                                   # BUDGET_S=0: no limit
[ "$BUDGET_S" -eq 0 ] || stop_after=$((BUDGET_S > setup ? BUDGET_S - setup : 1))
# shellcheck disable=SC2086
$PY scripts/run_tables.py --data "$LNSM" --teacher "$WORK/sr/teacher.pt" --out "$WORK/tables" --record "$RECORD" \
    --study l1 --jobs "$JOBS" --stop-after "$stop_after" \
    -s "optim.epochs=$EPOCHS" -s "loop.device=$DEVICE" -s "loop.num_threads=$THREADS" $EXTRA || status=$?
if [ -n "${status:-}" ]; then   # a failed run: still write the tables of what finished
    # shellcheck disable=SC2086
    $PY scripts/run_tables.py --data "$LNSM" --out "$WORK/tables" --record "$RECORD" --study l1 --no-train \
        --no-verify -s "optim.epochs=$EPOCHS" -s "loop.device=$DEVICE" -s "loop.num_threads=$THREADS" $EXTRA > /dev/null || true
fi
[ -z "${OUT:-}" ] || tar czf "$OUT/gpu_tables.tgz" "$RECORD"
echo "gpu_tables: $((SECONDS - t0)) s; $(ls -d "$RECORD"/*-s* 2>/dev/null | wc -l) runs in $RECORD" >&2
exit "${status:-0}"
