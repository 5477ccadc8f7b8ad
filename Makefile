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

venv: $(VENV)/.installed

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
