# The two commands: `make run` and `make test`. Both set up what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# Production hosts use KVM. `make run` without RUDDERVIRT_DOMAIN_TYPE probes whether KVM really
# runs a guest (scripts/run.sh) and picks TCG with a warning when it does not; to choose:
#   make run RUDDERVIRT_DOMAIN_TYPE=qemu

.PHONY: help setup run test test-fast lint bench

help:
	@echo "make run    set up everything and serve the portal on http://127.0.0.1:8000 (Ctrl-C stops it)"
	@echo "make test   set up everything and run the whole test suite (real VMs under TCG)"
	@echo "make lint   ruff check and format check (make test runs ruff check and mypy too)"
	@echo "make bench  set up everything with Packer and run the build benchmark (BENCH_ARGS=...)"

setup:
	@scripts/setup.sh

run: setup
	@scripts/run.sh

# Tests always use TCG and never give VMs internet, whatever the host.
test: export RUDDERVIRT_DOMAIN_TYPE = qemu
test: export RUDDERVIRT_ALLOW_INTERNET = false
# RudderVirt's own Redis (scripts/redis.sh), database 15; the password comes from var/.
test: export REDIS_URL = unix://$(CURDIR)/var/redis.sock?db=15
test: export RUDDERVIRT_NAME_PREFIX = rvt-
# The e2e tests serve images from a loopback HTTP server (docs/security.md).
test: export RUDDERVIRT_FETCH_ALLOW_NETS = 127.0.0.0/8
test:
	@scripts/setup.sh --for-tests
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: export RUDDERVIRT_DOMAIN_TYPE = qemu
test-fast: export RUDDERVIRT_ALLOW_INTERNET = false
test-fast: export REDIS_URL = unix://$(CURDIR)/var/redis.sock?db=15
test-fast: export RUDDERVIRT_FETCH_ALLOW_NETS = 127.0.0.0/8
test-fast:
	.venv/bin/python -m pytest -m "not e2e and not browser" $(PYTEST_ARGS)

# The benchmarks (docs/benchmarks.md): the same setup plus the optional peers (Packer), then
# the build benchmark, e.g.  make bench BENCH_ARGS="--image debian --runs 3 --markdown"
bench: export RUDDERVIRT_DOMAIN_TYPE = qemu
bench: export RUDDERVIRT_ALLOW_INTERNET = false
bench:
	@scripts/setup.sh --for-tests --with packer
	.venv/bin/python bench/build_bench.py $(BENCH_ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
