# The README's two commands are `make run` and `make test`; everything else builds on them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
DATA_DIR ?= ./var
# The web pages (public ceremony pages, status pages, operator console); HTTP= turns them off.
HTTP ?= 127.0.0.1:8080

.PHONY: run test protos check-protos lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/coordd serve --listen $(LISTEN) --data-dir $(DATA_DIR) $(if $(HTTP),--http $(HTTP))

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py

# Fails when the committed stubs differ from what `make protos` generates.
check-protos: protos
	git diff --exit-code --stat -- clients/coordd_client/v1
	test -z "$$(git status --porcelain -- clients/coordd_client/v1)"

tools/node_modules/.bin/buf: tools/package.json
	cd tools && npm install --no-audit --no-fund --silent
	touch $@

lint: $(STAMP) tools/node_modules/.bin/buf
	$(BIN)/ruff check server clients tests bench tools
	$(BIN)/ruff format --check server clients tests bench tools
	tools/node_modules/.bin/buf lint

bench: $(STAMP) tools/node_modules/.bin/buf
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/unary.py
	$(BIN)/python bench/jobs.py --worker-stream
	$(BIN)/python bench/register.py
	$(BIN)/python bench/heartbeats.py
	$(BIN)/python bench/queue_watch.py

clean:
	rm -rf $(VENV) var .pytest_cache tools/node_modules
