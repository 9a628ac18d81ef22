# dadafs — every target sets itself up (Debian packages, .venv); all targets are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_LIST := tools/apt-packages.txt
APT_STAMP := .stamp-apt
VENV_STAMP := .stamp-venv
PYTEST_OPTS ?=

.PHONY: all setup demo test test-fast test-slow lint typecheck bench clean

all: test

setup: $(APT_STAMP) $(VENV_STAMP)

# Debian packages, reinstalled only when the list changes.
$(APT_STAMP): $(APT_LIST)
	@missing=$$(grep -v '^\s*#' $(APT_LIST) | grep -v '^\s*$$' | while read p; do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "apt: installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

# The virtual environment with the project (editable) and its development tools.
$(VENV_STAMP): pyproject.toml $(APT_STAMP)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(PY) -m dadafs.demo

lint: setup
	$(VENV)/bin/ruff check dadafs workers tests tools
	$(VENV)/bin/ruff format --check dadafs workers tests tools

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_OPTS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_OPTS)

bench: setup
	$(PY) -m pytest -m bench -s $(PYTEST_OPTS)

clean:
	rm -rf $(VENV) $(APT_STAMP) $(VENV_STAMP) build *.egg-info

# ---- Provisioning (ansible/, pxe/, systemd/) ------------------------------------------------
# Collections come from the `ansible` package on PyPI (Galaxy is not needed).
ANSIBLE_COLLECTIONS := ansible/collections/ansible_collections/community/general/MANIFEST.json
.PHONY: ansible-collections ansible-lint test-provisioning-slow

$(ANSIBLE_COLLECTIONS): ansible/install-collections.sh ansible/requirements.yml $(VENV_STAMP)
	ansible/install-collections.sh $(VENV)/bin/pip

ansible-collections: $(ANSIBLE_COLLECTIONS)

ansible-lint: ansible-collections
	cd ansible && ../$(VENV)/bin/ansible-lint --profile production

# The slow provisioning tests alone (also part of `make test-slow`).
test-provisioning-slow: setup ansible-collections
	$(PY) -m pytest -m slow tests/test_provisioning_slow.py $(PYTEST_OPTS)

# ---- client benchmarks of issue 4 alone (tests/harness); DADAFS_BENCH_SCALE=0.25 for a quick run.
.PHONY: bench-client
bench-client: setup
	$(PY) -m pytest -m bench -s tests/test_bench_client.py tests/test_bench_client_scale.py $(PYTEST_OPTS)

# A diskless qemu node boots from a control environment built by the playbooks and computes
# a `dada stxm` request (issue 9). Roots and wheels stay in build/e2e (remove it to rebuild).
.PHONY: e2e-boot
e2e-boot: setup ansible-collections
	DADAFS_E2E=1 $(PY) -m pytest -m slow -s tests/e2e/test_boot.py $(PYTEST_OPTS)
