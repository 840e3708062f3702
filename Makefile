# abforge: build, test, lint, bench. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
OUT ?= out

.PHONY: build test test-deps lint bench image clean

build:
	$(CARGO) build --release --workspace

# Installs the Debian packages whose tools the tests check images with (as root),
# then runs every test of the workspace. Tests whose tool is missing are reported
# as ignored with the reason; under CI they fail.
test: test-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

test-deps:
	bash scripts/install-test-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Side-by-side timings of abforge and the standard tools on the same inputs, with ratios.
bench: build test-deps
	bash bench/run.sh

# The example image from the reference manifest.
image: build
	./target/release/abforge build manifests/eflow.yaml -o $(OUT)

clean:
	$(CARGO) clean
	rm -rf $(OUT)
