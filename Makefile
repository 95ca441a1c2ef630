# make test: set up .venv from scratch (pinned) and run the tests. make demo: the main job.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
JOBS ?= 2

.PHONY: venv test test-slow demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*; touch $@

test: venv
	$(VPY) -m pytest -q -n $(JOBS) --dist loadfile tests

test-slow: venv
	$(VPY) -m pytest -q -n $(JOBS) -m slow tests

demo: venv
	$(VPY) examples/demo.py

bench: venv
	$(VPY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
