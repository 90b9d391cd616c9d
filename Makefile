# make demo: set up .venv (once) and run the main job.  make test: same set-up, then every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint lab bench bench-extra clean cifar-data text-data notebooks notebook-spread

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tdakit demo

lint: $(STAMP)
	$(BIN)/ruff check tdakit tests benchmarks notebooks

# CIFAR-10 for notebook 05 and the loader tests: unpacked into the data folder ($$TDAKIT_DATA or
# ~/.cache/tdakit/data) when it is not there yet; never into the repository.
CIFAR_ARCHIVE ?= ../shared/data/cifar10-jpeg.tar.xz

cifar-data: $(STAMP)
	@if [ -f "$(CIFAR_ARCHIVE)" ]; then $(BIN)/tdakit cifar10 --archive "$(CIFAR_ARCHIVE)"; \
	else $(BIN)/tdakit cifar10 || echo "notebook 05 needs CIFAR-10: see docs/data.md"; fi

# SST-2 and WikiText-2 for notebook 06: the same, from their test archives.
SST2_ARCHIVE ?= ../shared/data/sst2-tsv.tar.xz
WIKITEXT_ARCHIVE ?= ../shared/data/wikitext2-valid-test.tar.xz

text-data: $(STAMP)
	@if [ -f "$(SST2_ARCHIVE)" ]; then $(BIN)/tdakit sst2 --archive "$(SST2_ARCHIVE)"; \
	else $(BIN)/tdakit sst2 || echo "notebook 06 needs SST-2: see docs/data.md"; fi
	@if [ -f "$(WIKITEXT_ARCHIVE)" ]; then $(BIN)/tdakit wikitext2 --archive "$(WIKITEXT_ARCHIVE)"; \
	else $(BIN)/tdakit wikitext2 || echo "notebook 06 needs WikiText-2: see docs/data.md"; fi

test: lint cifar-data text-data
	$(BIN)/python -m pytest --nbval notebooks tests --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider --durations=10

# Re-run every notebook top to bottom and store its outputs (docs/notebooks.md says when and how), with an empty
# cache so that nothing computed earlier is reused. Cell metadata (the measured tolerances) is kept.
notebooks: cifar-data text-data
	TDAKIT_CACHE="$$(mktemp -d)" $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=3600 notebooks/[0-9][0-9]_*.ipynb

# How far every printed notebook figure moves between float paths (BENCHMARKS.md "Notebooks across float paths"):
# about 2 hours on 2 cores; run it after changing what a notebook prints.
SPREAD ?= test-artifacts/notebook-spread
notebook-spread: cifar-data text-data
	for path in default compatible avx2 avx2-all one-thread; do \
		$(BIN)/python benchmarks/notebook_spread.py run --path $$path --out $(SPREAD) || exit 1; done
	$(BIN)/python benchmarks/notebook_spread.py report $(SPREAD)/*

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/lds_table.py --preset concrete --seeds 100
	$(BIN)/python benchmarks/lds_table.py --preset concrete_narrow --seeds 100
	$(BIN)/python benchmarks/lds_table.py --preset mnist
	$(BIN)/python benchmarks/checkpoint_placement.py concrete
	$(BIN)/python benchmarks/checkpoint_placement.py noisy_mnist
	$(BIN)/python benchmarks/checkpoint_placement.py rotated_mnist --subsets 50
	$(BIN)/python benchmarks/checkpoint_placement.py mnist --subsets 50
	$(BIN)/python benchmarks/speed.py --demo
	$(BIN)/python benchmarks/kronfluence_compare.py --setting concrete
	$(BIN)/python benchmarks/kronfluence_compare.py --setting mnist
	$(BIN)/python benchmarks/scaling.py

# optional: kronfluence 1.0.1 for the comparison benchmarks (never a runtime dependency of tdakit)
bench-extra: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps kronfluence==1.0.1

clean:
	rm -rf $(VENV) tdakit-report
