# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup tesseract chromium demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: on these machines 2.13.0 is the CPU wheel on disk, a plain `torch` is a CUDA build
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# The OCR scorer's engine, a system program: installed with apt-get when it is not on PATH (lists
# refreshed first, so stale lists on a fresh machine do not fail). Elsewhere it only warns; the OCR
# tests then skip locally and fail in CI (CI=true).
tesseract:
	@command -v tesseract >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing tesseract-ocr with apt-get"; \
	    $$SUDO apt-get update -qq || true; DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq tesseract-ocr >/dev/null \
	      || echo "warning: could not install tesseract-ocr; the OCR scorer will not work"; \
	  else \
	    echo "warning: install Tesseract for the OCR scorer (brew install tesseract, or your package manager)"; \
	  fi; }

# The browser the report tests render report.html with (headless), installed the same way; without it
# those tests skip locally and fail in CI.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing chromium with apt-get"; \
	    $$SUDO apt-get update -qq || true; DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	      || echo "warning: could not install chromium; the report tests will skip"; \
	  else \
	    echo "warning: install Chromium for the report tests (brew install --cask chromium, or your package manager)"; \
	  fi; }

setup: $(STAMP) tesseract chromium

demo: setup
	$(BIN)/multiloc demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/patch_speed.py
	$(BIN)/python benchmarks/localize.py

clean:
	rm -rf $(VENV) multiloc-out
