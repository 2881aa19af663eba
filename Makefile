# The README's two commands:
#   make demo   build fsdb and run its demo on an embedded default
#   make test   run the whole test suite
# Both install RocksDB's build dependency (libclang) first if it is missing.
#
# One cargo profile (release) serves tests, benchmarks and runs, so RocksDB's C++ is
# compiled once (~12 minutes on 2 cores) and reused.

CARGO ?= cargo

.PHONY: demo test deps bench fmt lint

deps:
	@./.ci/deps

demo: deps
	$(CARGO) run --release --quiet -- demo

test: deps
	$(CARGO) test --release --workspace

bench: deps
	$(CARGO) bench --workspace

fmt:
	$(CARGO) fmt --all

lint: deps
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
