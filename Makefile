# Two commands do all the set-up on a fresh machine (nothing but Python 3.11 needed):
#   make demo   — create .venv, install hwloop, run the whole loop on the local CPU (profile, fit, search, measure)
#   make test   — the same set-up plus test tools (and, as root, Debian's openssh-server and postgresql), then pytest
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.hwloop-installed
PYTEST_ARGS ?=
# two pytest workers, each test file on one worker (module fixtures built once); TEST_WORKERS=0 runs serially
TEST_WORKERS ?= 2

.PHONY: demo test typecheck setup sysdeps check-venv bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/hwloop demo

# Debian packages the real-component tests use (sshd, PostgreSQL 15, ip netns); skipped when not root.
sysdeps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  if [ ! -x /usr/sbin/sshd ] || [ ! -d /usr/lib/postgresql ] || ! command -v ip >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server postgresql iproute2 >/dev/null; \
	  fi; \
	else echo "note: not root; tests needing sshd/PostgreSQL skip unless they are installed"; fi

# The test venv must see nothing installed by hand on the machine (base site-packages, user site, PYTHONPATH).
check-venv: $(STAMP)
	$(BIN)/python .ci/check_venv.py

# mypy on hwloop/ at the level stated in pyproject.toml ([tool.mypy]); 0 errors expected
typecheck: $(STAMP)
	$(BIN)/python -m mypy

test: $(STAMP) sysdeps check-venv typecheck
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/hwloop bench --help

clean:
	rm -rf $(VENV) .pytest_cache
