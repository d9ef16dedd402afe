# The README's two commands: `make demo` (set up, then train the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench ablations clean

install: $(STAMP)

# Re-install whenever setup.py changes; a fresh clone builds the virtualenv from nothing.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[seqio,test]" -c constraints.txt
	touch $(STAMP)

demo: install
	$(PY) -m launch.main --config=experiments/shakespeare_char.py --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest -q -n 2 tests

test-all: install
	$(PY) -m pytest -q -n 2 -m "slow or not slow" tests

bench: install
	$(PY) -m launch.bench --config=experiments/shakespeare_char.py

# Every ablation sweep's CPU variant, one after another (finished variants are skipped).
ABLATIONS := lm_evolution architectures positions blocks scaling peft alignment
ablations: install
	for name in $(ABLATIONS); do \
		$(PY) -m launch.sweep --config=experiments/ablations/$$name.py --workdir=runs/sweeps/$$name || exit 1; \
	done

clean:
	rm -rf $(VENV) runs
