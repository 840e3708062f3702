# abforge: build, test, lint, bench. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
OUT ?= out

.PHONY: build test test-deps lint bench image clean init grub-efi boot-inputs boot-test

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

# Side-by-side timings of abforge and the standard tools on the same inputs (bench/run.sh),
# ending with one table of every ratio against its target. RUNS=N runs per side (default 3);
# uses $(CARGO_TARGET_DIR)/release/abforge when CARGO_TARGET_DIR is set.
bench: build test-deps
	bash bench/run.sh

# The example image from the reference manifest.
image: build
	./target/release/abforge build manifests/eflow.yaml -o $(OUT)

# The VM boot test's inputs (scripts/boot-inputs.sh), cached in BOOT_INPUTS between runs.
BOOT_INPUTS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/abforge/boot-inputs

# The static initramfs PID 1: $(or $(CARGO_TARGET_DIR),target)/init-release/abforge-init.
init:
	$(CARGO) rustc -p abforge-init --bin abforge-init --profile init-release -- -C target-feature=+crt-static

# A GRUB EFI image whose embedded config runs the ESP's A/B selector: $(BOOT_INPUTS)/BOOTX64.EFI.
grub-efi:
	bash scripts/boot-inputs.sh $(BOOT_INPUTS) grub

# Debootstrap root with Debian's kernel, GRUB image, init (as root; cached).
boot-inputs:
	bash scripts/boot-inputs.sh $(BOOT_INPUTS) all

# Builds the EFLOW manifest of tests/boot/ as VHDX and boots it under qemu (TCG) and OVMF.
boot-test: boot-inputs
	$(CARGO) build -p abforge
	ABFORGE_BOOT_INPUTS=$(BOOT_INPUTS) $(CARGO) test -p abforge-tests --test boot -- --ignored --test-threads=1 --nocapture

clean:
	$(CARGO) clean
	rm -rf $(OUT)
