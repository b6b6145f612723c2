# coati_nb — the two README commands are `make demo` and `make test`; both set everything up.
# Variables you may override:  make test PYTHON=python3.12   make demo TORCH_SPEC="torch==2.5.1" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu121"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_OUT    ?= runs/demo
NB          ?= nbs/00_utils.ipynb
# nbdev_test flags: CI (and `make test-slow`) also runs the cells marked `#| slow`
TEST_FLAGS  ?= $(if $(CI),--flags slow,)

PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := $(VENV)/.coati_nb-installed

.PHONY: ladder install test demo sync-check nbtest pytest test-slow nb-one hooks export readme lab clean browser colossalai docs docs-images

$(STAMP): settings.ini setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the build you chose (CPU wheel by default), so the ranges below add nothing
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip check
	@touch $@

install: $(STAMP)

## ColossalAI strategies (CUDA only). colossalai 0.5.0 pins torch <= 2.5.1 and transformers 4.51.3, so a plain
## `pip install colossalai` would replace the torch you chose: install it without its pins, then the few modules it
## imports. On a GPU machine use torch 2.5.1 (make install TORCH_SPEC="torch==2.5.1" ...), see docker/Dockerfile.
COLOSSALAI_SPEC ?= colossalai==0.5.0
colossalai: $(STAMP)
	$(PY) -m pip install -q --no-deps "$(COLOSSALAI_SPEC)"
	$(PY) -m pip install -q --no-deps galore_torch "bitsandbytes==0.50.2"
	$(PY) -m pip install -q einops psutil packaging peft
	$(PY) -c "import colossalai; print('colossalai', colossalai.__version__, 'is importable')"

## The browser the chat page's test drives: Debian's chromium (nothing may download a browser)
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing Debian's chromium for the browser test"; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## The tests: sync check, every notebook's tests, then pytest
test: $(STAMP) browser
	$(MAKE) sync-check
	$(MAKE) nbtest
	$(MAKE) pytest

## coati_nb/ must be exactly what nbdev_export makes, and notebooks must be clean
sync-check: $(STAMP)
	@$(PY) tests/nb_ids.py --check
	@rm -rf .sync && mkdir -p .sync && cp -r coati_nb nbs .sync/
	@$(BIN)/nbdev_export
	@$(BIN)/nbdev_clean
	@diff -r -x __pycache__ -x .ipynb_checkpoints .sync/coati_nb coati_nb || (echo "coati_nb/ was out of date with nbs/: run nbdev_export and commit"; exit 1)
	@diff -r -x __pycache__ -x .ipynb_checkpoints -q .sync/nbs nbs || (echo "a notebook was not clean: run nbdev_clean and commit"; exit 1)
	@rm -rf .sync
	@echo "sync-check: coati_nb/ matches nbs/, notebooks are clean"

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing $(TEST_FLAGS)

pytest: $(STAMP)
	$(BIN)/pytest -q tests

test-slow: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --flags slow

## One notebook's tests:  make nb-one NB=nbs/01_lora.ipynb
nb-one: $(STAMP)
	$(BIN)/nbdev_test --path $(NB) $(TEST_FLAGS)

## The main job
demo: $(STAMP)
	$(BIN)/coati_nb_pipeline --out $(DEMO_OUT)

## The algorithm ladder (14b_ladder) on clean demonstrations: every rung from one SFT model (tens of minutes on 2 cores,
## resumable with LADDER_FLAGS=--resume); then its table and plot are copied to docs/ for the README
LADDER_NAME  ?= ladder
LADDER_OUT   ?= runs/$(LADDER_NAME)
LADDER_FLAGS ?=
ladder: $(STAMP)
	$(BIN)/coati_nb_pipeline --ladder --sft_noise 0 --out $(LADDER_OUT) $(LADDER_FLAGS)
	mkdir -p docs/ladder docs/images
	cp $(LADDER_OUT)/ladder.json docs/ladder/$(LADDER_NAME).json
	cp $(LADDER_OUT)/plots/ladder.png docs/images/$(LADDER_NAME).png

## The notebooks as a static site a learner reads before running (_site/, not committed): every notebook executed in a
## kernel (the cells tests/test_notebooks_kernel.py skips are shown, not run) and rendered to HTML, plus _site/index.html.
## One notebook:  make docs NB=nbs/01_lora.ipynb   (or DOCS_NB=...)
DOCS_OUT ?= _site
DOCS_NB  ?= $(if $(filter command line,$(origin NB)),$(NB),)
docs: $(STAMP)
	$(PY) tools/build_docs.py site --out $(DOCS_OUT) $(DOCS_NB)

## The demo's plots for the README: copies $(DEMO_OUT)/plots/*.png into docs/images/ (committed; each at most 200 KiB)
docs-images:
	$(PYTHON) tools/build_docs.py images $(DEMO_OUT)

## Contributor habits
hooks: $(STAMP)
	$(BIN)/nbdev_install_hooks

export: $(STAMP)
	$(PY) tests/nb_ids.py
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

readme:
	$(PYTHON) tests/readme_sync.py

## JupyterLab on the notebooks; as root (e.g. in Docker) it needs --allow-root, which is added only then
lab: $(STAMP)
	$(BIN)/jupyter lab nbs $$([ "$$(id -u)" = 0 ] && echo --allow-root --ip=0.0.0.0 --no-browser)

clean:
	rm -rf .sync runs _proc _docs _site build *.egg-info
