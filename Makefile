# Two commands: `make serve` (set up, migrate, run the demo) and `make test` (set up, run every test).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SERVE_STAMP := $(VENV)/.installed-serve-$(SUM)
STAMP  := $(VENV)/.installed-test-$(SUM)
HOST   ?= 127.0.0.1
PORT   ?= 8000

# Demo-only settings for `make serve` (config/demo.env; a shell reads the same file with
# `set -a; . config/demo.env; set +a`). A value already in the environment wins.
DEMO_ENV := $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' config/demo.env)
$(foreach v,$(DEMO_ENV),$(eval export $(v) ?= $(shell sed -n 's/^$(v)=//p' config/demo.env)))
export GATEWAY_DEMO_URL    ?= http://$(HOST):$(PORT)


.PHONY: lint
.PHONY: setup serve test migrate bench browser-deps client-deps bullmq-deps clean fuzz trust

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# `make serve` installs what serving needs; `make setup` / `make test` add the test extra.
$(SERVE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	rm -f $(VENV)/.installed-serve-*
	touch $@

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@ $(SERVE_STAMP)

setup: $(STAMP)

migrate: $(SERVE_STAMP)
	$(VENV)/bin/gateway migrate

serve: migrate
	@echo "Demo: open http://$(HOST):$(PORT)/  (API key: $$GATEWAY_API_KEYS)"
	@echo "Send a signed Stripe event from another shell: set -a; . config/demo.env; set +a; .venv/bin/gateway send stripe payment_intent.succeeded"
	$(VENV)/bin/gateway serve --host $(HOST) --port $(PORT) --workers 2

# Chromium comes from Debian's package; Playwright drives it, it never downloads a browser.
browser-deps:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The browser client's package tests (tests/browser/test_client_package.py) bundle it with
# esbuild and type-check it with tsc: npm installs that tooling from tests/browser/npm's lock file.
# Without npm the tests skip, except in CI (GATEWAY_REQUIRE_BROWSER=1), where this target fails.
CLIENT_NPM := tests/browser/npm
CLIENT_STAMP := $(CLIENT_NPM)/node_modules/.installed-$(shell cat $(CLIENT_NPM)/package-lock.json | cksum | cut -d' ' -f1)

$(CLIENT_STAMP): $(CLIENT_NPM)/package-lock.json
	@if command -v npm >/dev/null && (cd $(CLIENT_NPM) && npm ci --no-audit --no-fund --loglevel=error); then \
		rm -f $(CLIENT_NPM)/node_modules/.installed-*; touch $@; \
	else \
		echo "client-deps: npm ci in $(CLIENT_NPM) failed; the client package tests will skip" >&2; \
		test "$$GATEWAY_REQUIRE_BROWSER" != 1; \
	fi

client-deps: $(CLIENT_STAMP)

# The BullMQ bridge (clients/bullmq) and its test scenario: BullMQ from the npm registry.
# Without npm the BullMQ test skips, except in CI (GATEWAY_REQUIRE_NODE=1), where this fails.
BULLMQ := clients/bullmq
BULLMQ_STAMP := $(BULLMQ)/node_modules/.installed-$(shell cat $(BULLMQ)/package-lock.json | cksum | cut -d' ' -f1)

$(BULLMQ_STAMP): $(BULLMQ)/package-lock.json
	@if command -v npm >/dev/null && (cd $(BULLMQ) && npm ci --no-audit --no-fund --loglevel=error); then \
		rm -f $(BULLMQ)/node_modules/.installed-*; touch $@; \
	else \
		echo "bullmq-deps: npm ci in $(BULLMQ) failed; the BullMQ test will skip" >&2; \
		test "$$GATEWAY_REQUIRE_NODE" != 1; \
	fi

bullmq-deps: $(BULLMQ_STAMP)

# Lint and types (pyproject.toml: [tool.ruff], [tool.mypy], strict on gateway/ and adapters/).
lint: setup
	$(VENV)/bin/ruff check gateway adapters tests bench examples
	$(VENV)/bin/mypy

test: setup lint browser-deps client-deps bullmq-deps
	env -u GATEWAY_CONFIG -u DATABASE_URL $(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hyperfine >/dev/null; }
	$(PY) -m bench

# Trust suite, long form: fuzzing with many more examples, then the crash/outage runs at scale
# (bench/trust.py; a private PostgreSQL cluster, never the shared one). CI runs the short forms.
FUZZ_EXAMPLES ?= 1000
fuzz: setup
	TRUST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) env -u GATEWAY_CONFIG -u DATABASE_URL $(PY) -m pytest -q -s \
		tests/test_trust_fuzz.py tests/test_trust_openapi.py tests/test_trust_forgery.py tests/test_trust_isolation.py

trust: fuzz
	env -u GATEWAY_CONFIG -u DATABASE_URL $(PY) -m bench.trust

clean:
	rm -rf $(VENV) gateway.db gateway.db-wal gateway.db-shm .pytest_cache
