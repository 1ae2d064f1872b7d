# Soft Mask toolkit. A fresh machine needs two commands: `make lnsm` and `make test`.
# Every target sets up .venv itself (python3 -m venv, project + test extra, CPU torch).
PYTHON   ?= python3
TORCH    ?= torch==2.13.0
VENV     ?= .venv
BIN      := $(VENV)/bin
PY       := $(BIN)/python
JOBS     ?= 2
SHARED_DATA ?= $(abspath ../shared/data)
DEEPLESION ?=
LIDC_DICOM ?=
MASKS    ?=
STAMP    := $(VENV)/.installed

export SOFTMASK_SHARED_DATA ?= $(SHARED_DATA)

.PHONY: setup test test-all test-export export-nnunet export-monai lnsm lidc masks slices release preview bench \
        bench-accuracy bench-accuracy-hybrid calibrate bench-build pretrain-sr train evaluate tables nnunet-baseline \
        bench-loader bench-matting3d figures clean report report-check help lidc3d lidc3d-agreement lnsm3d masks3d bench-truth3d \
        truth-tables

setup: $(STAMP)

# The first run says what it installs and shows pip's own progress (a few minutes, ~2.6 GB in .venv).
$(STAMP): pyproject.toml Makefile
	@echo "setup: creating $(VENV) (~2.6 GB): pip, $(TORCH) (CPU), then this project with its" >&2
	@echo "setup: test and train extras (numpy, scipy, scikit-image, opencv, h5py, numba, pydicom, pylidc, pytest...)" >&2
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on $(TORCH)
	$(PY) -m pip install --progress-bar on -e ".[test,train]"
	touch $(STAMP)
	@echo "setup: done; the commands are $(BIN)/softmask and $(BIN)/dsnet (or run 'source $(BIN)/activate' once)" >&2

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

# The `export` extra (nnunetv2, monai, datasets, mlcroissant; nibabel is a core dependency) is heavy: `make test`
# deselects its tests; this installs it (torch kept at $(TORCH), never a CUDA build) and runs them.
EXPORT_STAMP := $(VENV)/.installed-export
$(EXPORT_STAMP): $(STAMP)
	$(PY) -m pip install --quiet $(TORCH) -e ".[test,train,export]"
	touch $(EXPORT_STAMP)

test-export: $(EXPORT_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m export --durations=10

# Exports of a verified build (default build/lnsm): nnU-Net v2 raw dataset, MONAI datalist.
BUILD_DIR ?= build/lnsm
NNUNET_RAW ?= build/nnUNet_raw
NNUNET_PREPROCESSED ?= build/nnUNet_preprocessed
DATASET_ID ?= 501
MONAI_OUT ?= build/monai/lnsm
export-nnunet: $(EXPORT_STAMP)
	@test -f "$(BUILD_DIR)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(BUILD_DIR)"
	$(BIN)/softmask export nnunet "$(BUILD_DIR)" --dataset-id $(DATASET_ID) --out "$(NNUNET_RAW)" --splits-final --preprocessed "$(NNUNET_PREPROCESSED)" --overwrite $(if $(BAND_AS_IGNORE),--band-as-ignore,)

export-monai: $(EXPORT_STAMP)
	@test -f "$(BUILD_DIR)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(BUILD_DIR)"
	$(BIN)/softmask export monai "$(BUILD_DIR)" --out "$(MONAI_OUT)" --overwrite

# --- datasets -------------------------------------------------------------------------------
# Every build target takes OUT= (default build/<dataset>) and JOBS=; see `softmask --help`.
out_or    = $(if $(OUT),$(OUT),$(1))
RECIPE   ?=
RELEASE_OUT ?= build/release/lnsm

# N= phantom cases for the sample without DEEPLESION (default 60 -> 42/9/9 train/val/test crops, 31 patients, the phantom's own split: no shape or background in two splits; N=1500 -> 1050/225/225).
# PHANTOM=hybrid (default: real LIDC nodule shapes) or analytic (the old phantom); BACKGROUNDS=DIR
# puts the hybrid lesions into real slices (a LIDC DICOM or DeepLesion root).
N        ?= 60
PHANTOM  ?= hybrid
lnsm: $(STAMP)
	$(BIN)/softmask make-lnsm --out "$(call out_or,build/lnsm)" --jobs $(JOBS) $(if $(DEEPLESION),--deeplesion "$(DEEPLESION)",--n $(N) --phantom $(PHANTOM) $(if $(BACKGROUNDS),--backgrounds "$(BACKGROUNDS)",))

lidc: $(STAMP)
	@test -n "$(LIDC_DICOM)" || { echo "usage: make lidc LIDC_DICOM=/path/to/LIDC-IDRI [OUT=build/lidc] [JOBS=2]" >&2; exit 2; }
	SOFTMASK_NO_HINTS=1 $(BIN)/softmask build lidc "$(LIDC_DICOM)" --recipe $(if $(RECIPE),$(RECIPE),lidc) --out "$(call out_or,build/lidc)" --jobs $(JOBS)
	$(BIN)/softmask verify "$(call out_or,build/lidc)"

# 3-D: one 48x96x96 volume crop per nodule (recipe lidc3d; issue 26). LIDC= names the DICOM root
# (LIDC_DICOM= works too); without either, the shared fixture's lidc folder when present.
# ISOTROPIC=1 / ISOTROPIC=0 override the recipe's volume.isotropic.
LIDC ?= $(if $(LIDC_DICOM),$(LIDC_DICOM),$(if $(wildcard $(SHARED_DATA)/lidc/LIDC-IDRI-*),$(SHARED_DATA)/lidc,))
lidc3d: $(STAMP)
	@test -n "$(LIDC)" || { echo "usage: make lidc3d LIDC=/path/to/LIDC-IDRI [OUT=build/lidc3d] [JOBS=2] [ISOTROPIC=1|0]" >&2; exit 2; }
	SOFTMASK_NO_HINTS=1 $(BIN)/softmask build lidc "$(LIDC)" --volumes --recipe $(if $(RECIPE),$(RECIPE),lidc3d) --out "$(call out_or,build/lidc3d)" --jobs $(JOBS) $(if $(filter 1,$(ISOTROPIC)),--isotropic,)$(if $(filter 0,$(ISOTROPIC)),--no-isotropic,)
	$(BIN)/softmask verify "$(call out_or,build/lidc3d)"

# The 3-D Soft Mask of LIDC-IDRI-0001 against the readers' consensus (docs/RESULTS.md; needs ../shared/data).
lidc3d-agreement: $(STAMP)
	$(PY) benchmarks/lidc3d_agreement.py $(if $(LIDC),"$(LIDC)",)

# The bundled 3-D sample (no external data): N3D= 3-D hybrid nodules written as NIfTI image / mask /
# truth files (build/lnsm3d-phantom-source), built like a user's volumes (`softmask build masks
# --volumes --recipe lnsm3d`) -> build/lnsm3d, verified, preview build/lnsm3d-preview.png.
N3D ?= 24
lnsm3d: $(STAMP)
	$(BIN)/softmask make-lnsm3d --out "$(call out_or,build/lnsm3d)" --n $(N3D) --jobs $(JOBS)

masks: $(STAMP)
	@test -n "$(MASKS)" || { echo "usage: make masks MASKS=/path/to/pairs [RECIPE=masks] [OUT=build/masks] [JOBS=2]" >&2; exit 2; }
	SOFTMASK_NO_HINTS=1 $(BIN)/softmask build masks "$(MASKS)" --recipe $(if $(RECIPE),$(RECIPE),masks) --out "$(call out_or,build/masks)" --jobs $(JOBS)
	$(BIN)/softmask verify "$(call out_or,build/masks)"

# 3-D: your NIfTI image / mask volume pairs (softmask_builder/sources/nifti.py), one volume crop per
# mask component (recipe masks3d).
masks3d: $(STAMP)
	@test -n "$(MASKS)" || { echo "usage: make masks3d MASKS=/path/to/nifti_pairs [RECIPE=masks3d] [OUT=build/masks3d] [JOBS=2]" >&2; exit 2; }
	SOFTMASK_NO_HINTS=1 $(BIN)/softmask build masks "$(MASKS)" --volumes --recipe $(if $(RECIPE),$(RECIPE),masks3d) --out "$(call out_or,build/masks3d)" --jobs $(JOBS)
	$(BIN)/softmask verify "$(call out_or,build/masks3d)"

# Full slices for the SR teacher, from DEEPLESION= (recipe slices) or else LIDC_DICOM= (lidc_slices).
slices: $(STAMP)
	@test -n "$(DEEPLESION)$(LIDC_DICOM)" || { echo "usage: make slices DEEPLESION=/path | LIDC_DICOM=/path [OUT=build/slices] [JOBS=2]" >&2; exit 2; }
	SOFTMASK_NO_HINTS=1 $(BIN)/softmask build slices "$(if $(DEEPLESION),$(DEEPLESION),$(LIDC_DICOM))" --recipe $(if $(RECIPE),$(RECIPE),$(if $(DEEPLESION),slices,lidc_slices)) --out "$(call out_or,build/slices)" --jobs $(JOBS)
	$(BIN)/softmask verify "$(call out_or,build/slices)"

preview: $(STAMP)
	$(BIN)/softmask preview "$(call out_or,build/lnsm)" --n 8 --out "$(call out_or,build/lnsm)-preview.png"

# QC report of a dataset (`make lnsm` first; it is run if absent): OUT-report.html, one self-contained page.
report: $(STAMP)
	@test -f "$(call out_or,build/lnsm)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(call out_or,build/lnsm)"
	$(BIN)/softmask report "$(call out_or,build/lnsm)" --out "$(call out_or,build/lnsm)-report.html"

# The report rendered in headless Chromium (Debian's `chromium`; skipped, with the reason, when absent);
# its screenshot goes to docs/img/report.png, the preview of the same build to docs/img/preview.png.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)
ifeq ($(strip $(CHROMIUM)),)
report-check:
	@echo "report-check: skipped: chromium not found (Debian: apt-get install -y chromium)" >&2
else
report-check: report
	$(PY) tools/report_check.py "$(call out_or,build/lnsm)-report.html" --chromium "$(CHROMIUM)" --screenshot docs/img/report.png
	$(BIN)/softmask preview "$(call out_or,build/lnsm)" --n 8 --out docs/img/preview.png > /dev/null
endif

# A release build of LNSM (DEEPLESION= for the real one, else the phantom sample) from a clean,
# committed tree: rebuilt from scratch, verified, checksums checked with sha256sum.
release: $(STAMP)
	@test -z "$$(git status --porcelain --untracked-files=no)" || { echo "release: the git tree has uncommitted changes; commit them first" >&2; exit 2; }
	$(BIN)/softmask make-lnsm --out "$(call out_or,$(RELEASE_OUT))" --jobs $(JOBS) --overwrite $(if $(DEEPLESION),--deeplesion "$(DEEPLESION)",)
	cd "$(call out_or,$(RELEASE_OUT))" && sha256sum -c --quiet SHA256SUMS
	@cd "$(call out_or,$(RELEASE_OUT))" && extra="$$(ls -A | grep -v -x -F -e SHA256SUMS -e .plan.json -e .lock -e "$$(cut -c67- SHA256SUMS)")"; \
	  test -z "$$extra" || { echo "release: files outside SHA256SUMS: $$extra" >&2; exit 1; }
	@echo "release: $(call out_or,$(RELEASE_OUT)) built from commit $$(git rev-parse HEAD)"

bench-build: $(STAMP)
	$(PY) benchmarks/bench_build.py --n $(if $(BENCH_N),$(BENCH_N),300,1500) --repeats 3

# Speed: new vs reference, side by side in one run, ratios printed.
bench: $(STAMP)
	$(PY) benchmarks/bench_matting.py
	$(PY) benchmarks/bench_trimap.py

bench-loader: $(STAMP)
	$(PY) benchmarks/bench_loader.py

bench-truth3d: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 $(PY) benchmarks/bench_truth3d.py --n 240 --seed 0 --record docs/results/truth3d

bench-matting3d: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 10 $(PY) benchmarks/bench_matting3d.py

figures: $(STAMP)
	$(PY) benchmarks/figures_real.py --data "$(SHARED_DATA)" --out docs/img

# --- trainer --------------------------------------------------------------------------------
# SR teacher on full slices: the phantom sample's slices, or DEEPLESION= slices.
SR_SOURCE ?= build/lnsm-phantom-source
SR_SLICES ?= build/sample-slices
SR_CONFIG ?= sr_tiny
TEACHER  ?= runs/sr-$(SR_CONFIG)/teacher.pt
# The teacher trains only on slices of patients of LNSM_DIR's train split (--train-patients-from),
# so no DRTM row's teacher has seen a segmentation val/test patient; TEACHER_OVERLAP=1 reproduces
# the paper's setting (every slice) instead.
pretrain-sr: $(STAMP)
	@test -f "$(LNSM_DIR)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(LNSM_DIR)"
	$(if $(DEEPLESION),,SOFTMASK_NO_HINTS=1 $(BIN)/softmask phantom --kind $(PHANTOM) --n $(N) --out "$(SR_SOURCE)" > /dev/null)
	SOFTMASK_NO_HINTS=1 $(BIN)/softmask build slices "$(if $(DEEPLESION),$(DEEPLESION),$(SR_SOURCE))" --recipe slices --out "$(SR_SLICES)" --no-progress $(if $(DEEPLESION),,--overwrite) > /dev/null
	$(BIN)/dsnet pretrain-sr --data "$(SR_SLICES)" --out runs/sr-$(SR_CONFIG) --config $(SR_CONFIG) --resume auto $(if $(TEACHER_OVERLAP),,--train-patients-from "$(LNSM_DIR)")

# DSNet on the LNSM shards (`make lnsm` first; it is run if absent). VARIANT= picks a Table
# III/IV/V row (unet, backbone, sr_input, drtm, drtm_soft, dsnet, dsnet_no_detail, ...).
SEG_CONFIG ?= seg_tiny
LNSM_DIR   ?= build/lnsm
SEG_RUN    ?= runs/$(SEG_CONFIG)$(if $(VARIANT),-$(VARIANT),)
train: $(STAMP)
	@test -f "$(LNSM_DIR)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(LNSM_DIR)"
	$(if $(filter unet backbone,$(VARIANT)),,@test -f "$(TEACHER)" || SOFTMASK_NO_HINTS=1 $(MAKE) pretrain-sr)
	$(BIN)/dsnet train --config $(SEG_CONFIG) --data "$(LNSM_DIR)" --teacher "$(TEACHER)" --out "$(SEG_RUN)" $(if $(VARIANT),--variant $(VARIANT),)

evaluate: $(STAMP)
	$(BIN)/dsnet evaluate --checkpoint "$(SEG_RUN)/checkpoints/best.pt" --data "$(LNSM_DIR)"

# Tables III-V: every (row, seed) trained and evaluated once (finished runs skipped, so it can be
# run in several sittings), then TABLES.md with seed spreads, paired per-crop CIs, Dice by size.
# TABLES_SET= passes config overrides (e.g. TABLES_SET="-s optim.epochs=30"); TABLES_JOBS= runs at
# once; TABLES_RECORD= a folder to commit (each finished run's small files + the tables); NNUNET_EVAL= adds
# `dsnet evaluate --predictions` report folders (nnU-Net runs) as a row.
TABLES_OUT ?= runs/tables
TABLES_SET ?=
TABLES_JOBS ?= 1
TABLES_RECORD ?=
NNUNET_EVAL ?=
tables: $(STAMP)
	@test -f "$(LNSM_DIR)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(LNSM_DIR)"
	@test -f "$(TEACHER)" || SOFTMASK_NO_HINTS=1 $(MAKE) pretrain-sr
	$(PY) scripts/run_tables.py --data "$(LNSM_DIR)" --teacher "$(TEACHER)" --out "$(TABLES_OUT)" --config $(SEG_CONFIG) --jobs $(TABLES_JOBS) $(if $(TABLES_RECORD),--record "$(TABLES_RECORD)",) $(TABLES_SET) $(foreach d,$(NNUNET_EVAL),--nnunet "$(d)")

# The truth study (issue 25): both builds' TABLES.md / tables.json rebuilt from the committed per-run
# records alone (no build, no training; seconds). The runs themselves: docs/TRAINING.md.
TRUTH_SET = -s optim.epochs=10 -s loop.max_steps_per_epoch=250 -s loop.num_threads=1
TRUTH1_NNUNET_LABEL = nnunet_2d 2500 steps x batch 8 (1 % of default steps)
truth-tables: $(STAMP)
	$(PY) scripts/run_tables.py --data build/truth1 --out runs/truth1 --record docs/results/truth1 --no-train \
	    --rows A0,A1,A2,A3,A4,B0,B1,B2,B3 --seeds 5 --seeds-b 4 $(TRUTH_SET) \
	    --nnunet docs/results/truth1/nnunet-2d-run0 --nnunet-label "$(TRUTH1_NNUNET_LABEL)"
	$(PY) scripts/run_tables.py --data build/truth2 --out runs/truth2 --record docs/results/truth2 --no-train \
	    --rows A0,A1,A2,B0,B1,B2 --seeds 3 $(TRUTH_SET)
	@if ! git rev-parse --git-dir >/dev/null 2>&1; then echo "truth tables: rebuilt (not a git checkout: not compared)"; \
	elif git diff --quiet -- docs/results/truth1 docs/results/truth2; then \
	    echo "truth tables: docs/results/truth1/TABLES.md and truth2/TABLES.md rebuilt, identical to the committed ones"; \
	else echo "truth tables: rebuilt; they differ from the committed ones (git diff docs/results/truth1 docs/results/truth2)"; fi

# nnU-Net v2 2-D baseline through the nnU-Net export, scored by `dsnet evaluate --predictions`.
NNUNET_WORK ?= runs/nnunet
NNUNET_TRAINER ?= nnUNetTrainer_5epochs
NNUNET_RUN ?= 0
# nnU-Net imports torchvision, and PyPI's torchvision does not load beside the CPU torch wheel of
# .venv ("operator torchvision::nms does not exist"): nnU-Net gets its own venv with a matching pair
# (NNUNET_TORCH; on this project's x86_64 machines a CUDA build, 6.4 GB in the venv, that runs on the CPU).
NNUNET_VENV ?= .venv-nnunet
NNUNET_TORCH ?= torch==2.14.1 torchvision==0.29.1
NNUNET_STAMP := $(NNUNET_VENV)/.installed
$(NNUNET_STAMP):
	test -x $(NNUNET_VENV)/bin/python || $(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/python -m pip install --quiet $(NNUNET_TORCH)
	$(NNUNET_VENV)/bin/python -m pip install --quiet "nnunetv2>=2.5"
	touch $(NNUNET_STAMP)

nnunet-baseline: $(EXPORT_STAMP) $(NNUNET_STAMP)
	@test -f "$(LNSM_DIR)/manifest.json" || SOFTMASK_NO_HINTS=1 $(MAKE) lnsm OUT="$(LNSM_DIR)"
	BIN=$(BIN) NNUNET_BIN=$(NNUNET_VENV)/bin DATASET_ID=$(DATASET_ID) scripts/nnunet_baseline.sh "$(LNSM_DIR)" "$(NNUNET_WORK)" $(NNUNET_TRAINER) $(NNUNET_RUN)

bench-accuracy: $(STAMP)
	$(PY) benchmarks/bench_accuracy.py

# Hybrid phantom (real LIDC shapes): 27 cells x 20 cases x 2 parts, re-choice on the choosing part (~10 min).
bench-accuracy-hybrid: $(STAMP)
	nice -n 10 $(PY) benchmarks/bench_accuracy_hybrid.py

# Real LIDC fixtures (>= 3 readers) beside hybrid cases from the same outlines (needs SHARED_DATA).
calibrate: $(STAMP)
	$(PY) benchmarks/calibrate_real.py --hybrid

clean:
	rm -rf build runs

# `make help` prints the "## " lines below (tests/docs/test_make_help.py checks every target is listed).
## setup          .venv with the project, its test/train extras and CPU torch (every target runs it)
## test           the test suite without `slow` tests (< 10 min on 2 cores)
## test-all       every test, `slow` ones included
## test-export    install the `export` extra (nnU-Net, MONAI, datasets, mlcroissant) and run the export tests
## lnsm           the phantom sample (or DEEPLESION=) -> build/lnsm, verified; N= phantom cases
## lidc           LIDC-IDRI Soft Masks from LIDC_DICOM= -> build/lidc, verified
## lidc3d         LIDC-IDRI 3-D Soft Masks (one volume per nodule) from LIDC= (default: the shared fixture) -> build/lidc3d, verified
## lidc3d-agreement  3-D Soft Mask vs the readers' consensus on LIDC-IDRI-0001 (docs/RESULTS.md)
## masks          your image/mask pairs from MASKS= -> build/masks, verified
## masks3d        your NIfTI image/mask volume pairs from MASKS= -> build/masks3d (3-D Soft Masks), verified
## lnsm3d         the bundled 3-D sample (no external data) -> build/lnsm3d, verified, preview; N3D= volumes (24)
## slices         full CT slices for the SR teacher (DEEPLESION= or LIDC_DICOM=) -> build/slices
## preview        contact sheet of a build -> OUT-preview.png (default build/lnsm-preview.png)
## report         QC report of a build -> OUT-report.html (default build/lnsm-report.html)
## report-check   render the report in headless Chromium -> docs/img/report.png, docs/img/preview.png
## release        clean git tree only: rebuild LNSM from scratch, verify, sha256sum -c
## bench          matting and trimap speed, new vs reference, ratios printed
## bench-build    build throughput, jobs 1 vs 2
## bench-loader   trainer data-loader throughput
## bench-truth3d   3-D Soft Mask vs 2-D stacked vs binary against the 3-D phantom's truth (240 nodules, ~3 min)
## bench-matting3d 3-D matting (64x64x24 nodules) vs a plain scipy sparse solve, ratio printed
## bench-accuracy Soft Mask accuracy tables on the phantom
## bench-accuracy-hybrid  Soft Mask accuracy on the hybrid phantom (27 cells, choosing/held-out parts)
## calibrate      real LIDC fixtures beside hybrid cases from the same outlines (needs ../shared/data)
## export-nnunet  the build as an nnU-Net v2 raw dataset + splits_final.json (BUILD_DIR=, NNUNET_RAW=)
## export-monai   the build as NIfTI files + a MONAI datalist (BUILD_DIR=, MONAI_OUT=)
## figures        real-data figures of docs/img from the shared fixtures
## pretrain-sr    SR teacher on the sample's slices -> runs/sr-sr_tiny/teacher.pt
## train          DSNet (SEG_CONFIG, VARIANT=) on build/lnsm -> runs/seg_tiny
## evaluate       Dice / SEN / PPV of the trained run on build/lnsm's test split
## tables         Tables III-V runs (finished runs skipped), mean ± std over seeds, paired CIs
## nnunet-baseline  nnU-Net v2 2-D baseline through the nnU-Net export
## truth-tables   the truth study's tables (docs/results/truth1, truth2) rebuilt from the committed records
## clean          remove build/ and runs/
## help           this list
help:
	@sed -n 's/^## //p' $(firstword $(MAKEFILE_LIST))
