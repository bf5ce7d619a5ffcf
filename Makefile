# msgr: every target sets up its own virtualenv first, so on a fresh machine
# `make test`, `make serve` or `make demo` is the one command to type.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP  := $(VENV)/.installed
WORMHOLE := .venv-wormhole

.PHONY: install test test-fast lint serve demo bench bench-quick bench-transfer fuzz soak soak-cluster churn clean

# Two stamps: running a relay or the demo needs the runtime dependencies only
# (PyNaCl, argon2-cffi); tests, lint and benchmarks add the development ones.
$(RUNTIME): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) requirements-dev.txt
	@# The engine tests run a real redis-server: installed from Debian's packages
	@# when missing and we may (root with apt-get); otherwise they are skipped.
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq >/dev/null && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "note: redis-server is not installed; the engine tests will be skipped" \
				"(apt-get install redis-server)"; \
		fi; }
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)  ## create .venv with runtime and dev dependencies

test: $(STAMP)  ## lint, then the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## the unit tests only (tests/unit), fewer property examples: the edit loop
	MSGR_FUZZ_EXAMPLES=25 $(BIN)/python -m pytest tests/unit

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

serve: $(RUNTIME)  ## run a relay with TLS on port 8765 (creates cert.pem/key.pem if missing)
	$(BIN)/python msgr.py serve --tls

demo: $(RUNTIME)  ## a local TLS relay and two scripted clients exchanging messages
	$(BIN)/python -m tools.demo

bench: $(STAMP) $(WORMHOLE)/.installed  ## the benchmark table, then file transfer beside magic-wormhole (several minutes)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.transfer --wormhole-venv $(WORMHOLE)

bench-transfer: $(STAMP) $(WORMHOLE)/.installed  ## file transfer only: msgr beside magic-wormhole (100 MiB, 3 runs each)
	$(BIN)/python -m bench.transfer --wormhole-venv $(WORMHOLE)

# magic-wormhole and its servers, for bench/transfer.py only: their own virtualenv.
$(WORMHOLE)/.installed: requirements-bench.txt
	test -x $(WORMHOLE)/bin/python || $(PYTHON) -m venv $(WORMHOLE)
	$(WORMHOLE)/bin/python -m pip install -q -r requirements-bench.txt
	touch $@

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

fuzz: $(STAMP)  ## the property and fuzz tests with 100x the examples CI uses
	MSGR_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/unit/test_framing.py tests/unit/test_protocol.py tests/unit/test_speedups.py \
		tests/unit/relay/test_relay_fuzz.py tests/unit/crypto tests/unit/client/test_session.py \
		tests/unit/client/test_window.py tests/unit/ui tests/unit/invite tests/unit/transfer

soak: $(STAMP)  ## 100,000 messages through a relay with clients dropping at random
	$(BIN)/python -m tools.soak

soak-cluster: $(STAMP)  ## 100,000 messages across three relays on one redis-server, one relay killed
	$(BIN)/python -m tools.soak_cluster

churn: $(STAMP)  ## 10 minutes: two long chats through two relay restarts, a third client churning
	$(BIN)/python -m tools.churn

clean:
	rm -rf $(VENV) $(WORMHOLE) .pytest_cache .hypothesis .ruff_cache build *.egg-info
