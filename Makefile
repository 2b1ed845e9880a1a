# diffusion-studio: `make run` opens the studio, `make test` runs every check. Both install what
# is missing first (scripts/setup.sh).
CACHE_DIR ?= $(or $(DIFFUSION_STUDIO_CACHE),$(HOME)/.cache/diffusion-studio)
VENV := $(CACHE_DIR)/venv
# torch-sys finds libtorch through the venv's python (LIBTORCH_USE_PYTORCH=1).
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export DIFFUSION_STUDIO_CACHE := $(CACHE_DIR)
BIN := target/release/diffusion-studio

.PHONY: setup build run test lint unit window-test fixtures bench clean

setup:
	@bash scripts/setup.sh >/dev/null

build: setup
	cargo build --release

run: build
	$(BIN) $(ARGS)

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

unit: setup
	cargo test

window-test: build
	bash scripts/window-test.sh $(BIN)

test: lint unit window-test

# diffusion-studio against diffusers on this machine → BENCHMARKS.md (installs diffusers into the venv).
bench: build
	$(VENV)/bin/python -m pip install --quiet diffusers==0.42.1 transformers==5.23.0
	PYTHON=$(VENV)/bin/python bash bench/run.sh $(BIN)

# Regenerates tests/fixtures/ with diffusers as the oracle (pinned versions, into the same venv).
fixtures: setup
	$(VENV)/bin/python -m pip install --quiet diffusers==0.42.1 transformers==5.23.0 ftfy regex librosa==0.11.0
	$(VENV)/bin/python tests/fixtures/make_fixtures.py

clean:
	cargo clean
