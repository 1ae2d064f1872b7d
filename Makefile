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

.PHONY: setup test test-all lnsm lidc masks release preview bench bench-accuracy bench-build \
        pretrain-sr train evaluate clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,train]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

# --- datasets -------------------------------------------------------------------------------
LNSM_OUT ?= build/lnsm
lnsm: $(STAMP)
	$(BIN)/softmask make-lnsm --out "$(if $(OUT),$(OUT),$(LNSM_OUT))" --jobs $(JOBS) $(if $(DEEPLESION),--deeplesion "$(DEEPLESION)",)

bench: $(STAMP)
	$(PY) benchmarks/bench_matting.py

bench-accuracy: $(STAMP)
	$(PY) benchmarks/bench_accuracy.py

clean:
	rm -rf build runs
