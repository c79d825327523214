# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := data/synthetic

.PHONY: demo test test-faults install clean gpu-wheels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision first, pinned together (timm pulls torchvision; a plain newer
	# torch would download gigabytes).
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

TEACHER := runs/teacher_tiny

# The whole pipeline on the embedded synthetic data set (grows with each stage). Each stage
# is a file target, so a second `make demo` skips what is done and resumes what was cut off.
CACHE := cache/demo
STUDENT := runs/student_tiny
PROBES := runs/probes
INSPECT := runs/inspect
PROBE = $(BIN)/salt probe --train $(DEMO)/train.csv --val $(DEMO)/val.csv --config configs/probe/demo.yaml
# Every encoder is probed by both protocols; the second reuses the token maps of the first.
PROBED := random teacher student
PROBE_JSONS := $(foreach e,$(PROBED),$(PROBES)/$(e).linear.json $(PROBES)/$(e).attentive.json)

demo: $(PROBE_JSONS) $(INSPECT)/summary.json $(INSPECT)/reconstruction.png
	$(BIN)/salt report --teacher-run $(TEACHER) --cache $(CACHE) --student-run $(STUDENT) $(foreach j,$(PROBE_JSONS),--probe $(j)) \
		--curves $(INSPECT)/loss_curves.png
	@echo "demo: data in $(DEMO), teacher in $(TEACHER)/teacher.pt, latent cache in $(CACHE), student in $(STUDENT)/student.pt"
	@echo "probes: at this scale (minutes on a CPU) no margin over the random-init floor is expected; docs/results.md, \"Learning, second round\""
	@echo "      metrics: $(TEACHER)/metrics.jsonl, $(STUDENT)/metrics.jsonl; probe results: $(PROBES)/*.json"
	@echo "      pictures: the teacher's reconstructions $(INSPECT)/reconstruction.png, loss curves $(INSPECT)/loss_curves.png,"
	@echo "      the cache $(INSPECT)/*.png"

# The calibrated benchmark's generator (docs/results.md, "Calibration"): 600 train / 200 val videos.
$(DEMO)/train.csv: | $(STAMP)
	$(BIN)/salt make-synthetic --out $(DEMO) --videos 800 --size 40 --frames 8 --tubelet 1 --waves 2 --blobs 0 --seed 0

$(TEACHER)/teacher.pt: $(DEMO)/train.csv | $(STAMP)
	$(BIN)/salt train-teacher --config configs/teacher/vit_tiny.yaml --set run.out_dir=$(TEACHER) \
		$(if $(wildcard $(TEACHER)/config.yaml),--resume)

# Process 1: the frozen teacher's latents, 4 views per video, in both formats. A cut-off run
# resumes by running the same command again.
$(CACHE)/manifest.json: $(TEACHER)/teacher.pt
	$(BIN)/salt cache-latents --teacher $(TEACHER)/teacher.pt --data $(DEMO)/train.csv --out $(CACHE) \
		--views 4 --format both --workers 2

# Process 2: two DeepSpeed ranks (gloo on CPU) stream the cache; the teacher is never loaded.
$(STUDENT)/student.pt: $(CACHE)/manifest.json
	PATH=$(abspath $(BIN)):$$PATH deepspeed --num_gpus 2 salt/train_student.py --config configs/student/vit_tiny.yaml \
		--set run.out_dir=$(STUDENT) $(if $(wildcard $(STUDENT)/config.yaml),--resume)

# Frozen probes, linear and attentive: a random-init encoder (the floor), the teacher, the student.
$(PROBES)/random.%.json: $(DEMO)/train.csv | $(STAMP)
	$(PROBE) --protocol $* --work-dir $(PROBES)/features/random --random-init vit_tiny_rope \
		--arch img_size=32 --arch num_frames=8 --arch patch_size=8 --out $@
$(PROBES)/teacher.%.json: $(TEACHER)/teacher.pt
	$(PROBE) --protocol $* --work-dir $(PROBES)/features/teacher --encoder $< --out $@
$(PROBES)/student.%.json: $(STUDENT)/student.pt
	$(PROBE) --protocol $* --work-dir $(PROBES)/features/student --encoder $< --out $@

# What the teacher predicts at masked tubelets, beside the truth, for a few val clips.
$(INSPECT)/reconstruction.png: $(TEACHER)/teacher.pt
	$(BIN)/salt reconstruct $(TEACHER) --data $(DEMO)/val.csv --out $@

# Offline look inside the cache: integrity, statistics, pictures.
$(INSPECT)/summary.json: $(CACHE)/manifest.json
	$(BIN)/salt inspect $(CACHE) --verify --pictures $(INSPECT) --json $@

test: $(STAMP)
	$(BIN)/ruff check salt tests benchmarks
	$(BIN)/ruff format --check salt tests benchmarks
	$(BIN)/python -m pytest -q

# Only the fault-injection suite (`make test` runs it too).
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults

clean:
	rm -rf $(VENV) .pytest_cache

# What benchmarks/gpu_evidence.sh carries to a bare GPU machine without network (Python 3.12,
# its own torch and timm): the wheels it lacks (av, numcodecs, simplejpeg, zarr, deepspeed
# and theirs) and real H.264 clips made here, into gpu-carry/ (~59 MiB; benchmarks/gpu_carry.py).
gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_carry.py build
