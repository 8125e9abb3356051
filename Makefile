# neuralcleanse: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# constraints.txt pins the tested torch (the local CPU wheel where pip's find-links offer it);
# the package itself accepts any torch >= 2.1.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,dev]"
	# ONNX support for the tests: onnx2torch without the torchvision it declares (the torchvision
	# wheels for this torch are CUDA builds; onnx2torch needs it for two detection operators only)
	$(BIN)/pip install --quiet -c constraints.txt "onnx>=1.16"
	$(BIN)/pip install --quiet --no-deps "onnx2torch>=1.5"
	touch $(STAMP)

demo: install
	$(BIN)/neuralcleanse demo --out demo-report

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/scan_speed.py

clean:
	rm -rf $(VENV) demo-report
