# Two commands set up everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# ranks for the quickstart: one per GPU, or 2 CPU ranks (gloo) without one
NPROC  ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); [ "$$n" -gt 0 ] && echo $$n || echo 2)
BIN    := $(VENV)/bin
# the quickstart: the embedded synthetic default, end to end
QS_CONFIG ?= configs/synthetic_tiny.yaml
# accelerate needs --cpu where there is no GPU
ACCEL_DEVICE := $(shell nvidia-smi -L >/dev/null 2>&1 || echo --cpu)
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test bench clean

install: $(STAMP)

# Re-runs only when the dependency declarations change (idempotent).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[test]'
	touch $(STAMP)

quickstart: install
	$(BIN)/eeg2im stream --config $(QS_CONFIG)
	$(BIN)/deepspeed --num_gpus $(NPROC) launchers/train.py --config $(QS_CONFIG)
	$(BIN)/accelerate launch $(ACCEL_DEVICE) --num_processes $(NPROC) --num_machines 1 --mixed_precision no \
	    --dynamo_backend no launchers/tune.py --config $(QS_CONFIG)
	$(BIN)/accelerate launch $(ACCEL_DEVICE) --num_processes $(NPROC) --num_machines 1 --mixed_precision no \
	    --dynamo_backend no launchers/evaluate.py --config $(QS_CONFIG) --overwrite
	$(BIN)/eeg2im report --config $(QS_CONFIG)

test: install
	$(BIN)/python -m pytest

# Every benchmark into benchmarks/results (JSONs, PNGs, logs/, bench_summary.json); ~15 min on a 2-core CPU.
# The conditioning ablation is left out: ~3 h there (two methods); run it alone with
#   $(BIN)/python -m eeg2im_scale.bench all --out benchmarks/results --only ablation
bench: install
	$(BIN)/python -m eeg2im_scale.bench all --out benchmarks/results --skip ablation

clean:
	rm -rf runs
