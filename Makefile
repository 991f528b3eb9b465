# carapace — two commands for a fresh machine:
#   make run    install what is missing, build, start the daemon on embedded defaults
#   make test   install what is missing, build, run every test (end-to-end ones in the test host if needed)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CARAPACE_CACHE ?= /var/cache/carapace
export CARAPACE_CACHE
# Dependencies compiled once are reused by every clone on this machine (workspace crates rebuild per clone).
CARGO_TARGET_DIR ?= $(CARAPACE_CACHE)/target
export CARGO_TARGET_DIR
GUEST_DIR ?= /var/lib/carapace/guest
HOST_TRIPLE := x86_64-unknown-linux-gnu
BIN := $(CARGO_TARGET_DIR)/release
AGENT := $(CARGO_TARGET_DIR)/$(HOST_TRIPLE)/release/carapace-agent
CARGO := cargo

.PHONY: run test lint deps build agent guest-image test-unit test-testhost test-e2e critest critest-busybox bench-boot bench-pull bench-container bench-cri bench-exec bench-vsock bench-net bench-density clean-guest fuzz

DEB_PACKAGES := qemu-system-x86 linux-source-6.1 bison flex bc libelf-dev libssl-dev busybox-static cpio \
	protobuf-compiler xz-utils kmod jq file libseccomp-dev docker-registry apache2-utils zstd curl skopeo runc containerd \
	gcc g++ libc6-dev containernetworking-plugins iptables tmux e2fsprogs


deps: ## Debian packages the build and the tests need (idempotent)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(CARGO) build --release --locked -p carapace

agent: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked -p carapace-agent --target $(HOST_TRIPLE)

guest-image: deps agent ## guest kernel (cached by input hash) + initramfs with the agent as /init
	@vmlinux=$$(guest-image/build-kernel.sh | tail -n1); \
	mkdir -p $(GUEST_DIR); \
	cmp -s "$$vmlinux" $(GUEST_DIR)/vmlinux || { cp "$$vmlinux" $(GUEST_DIR)/vmlinux.tmp && mv $(GUEST_DIR)/vmlinux.tmp $(GUEST_DIR)/vmlinux; }; \
	guest-image/build-initramfs.sh $(AGENT) $(GUEST_DIR)/initramfs.cpio >/dev/null; \
	echo "guest image: $(GUEST_DIR)/vmlinux $(GUEST_DIR)/initramfs.cpio"

run: build guest-image
	$(BIN)/carapace check || true
	exec $(BIN)/carapace serve

test: build guest-image lint test-unit test-testhost test-e2e

# Mechanical gates: the formatter's style (rustfmt.toml) and clippy with warnings as errors.
lint: deps
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

test-unit: deps
	$(CARGO) test --release --locked --workspace

test-testhost: deps
	tests/testhost/selftest

# End-to-end tests need a KVM that boots Linux: run them directly where `carapace check` says so,
# otherwise inside emulated single-CPU test hosts, two at once (lanes, see tests/run-e2e), which
# also turn on the VMM's vCPU kick (ENVIRONMENT.md). critest (see `critest` below) runs as one
# more item of lane A; E2E_CRITEST= leaves it out.
E2E_CRITEST ?= critest
test-e2e: build guest-image agent critest-busybox
	@bins=$$( { $(CARGO) test --release --locked -p carapace-tests --no-run --message-format=json; \
	  $(CARGO) test --release --locked -p carapace-agent --test container_vm --no-run --message-format=json; } 2>/dev/null \
	  | jq -r 'select(.profile.test == true and .target.kind == ["test"]) | .executable'); \
	CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR) CARAPACE_AGENT_BIN=$(AGENT) \
	  BUSYBOX=$(CRITEST_BUSYBOX) tests/run-e2e $$bins $(E2E_CRITEST)

# critest, the CRI validation suite (${CRITEST:-../shared/bin/critest}), against `carapace serve`
# with a local registry of its images (tests/critest/run): directly where `carapace check` says
# this KVM boots a guest, otherwise in the test host. Reports in tests/critest/results (or
# CRITEST_RESULTS); CRITEST_ARGS go to critest (e.g. --ginkgo.focus=REGEX). Fails on a failed
# spec that is on neither tests/critest/skip.list nor tests/critest/known-failures.list.
critest: build guest-image agent critest-busybox
	@export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR) BUSYBOX=$(CRITEST_BUSYBOX); \
	if $(BIN)/carapace check >/dev/null 2>&1; then runner=(); else \
	  echo "critest: this host's KVM cannot boot a Linux guest; running critest in the test host"; \
	  pass=(); for v in CRITEST CRITEST_RESULTS CRITEST_PARALLEL CRITEST_TIMEOUT CRITEST_LOG BUSYBOX; do \
	    [ -z "$${!v:-}" ] || pass+=("$$v=$${!v}"); done; \
	  runner=(tests/testhost/run --smp 1 --timeout 4500 -- env CARAPACE_VMM_KICK_MS=100 "$${pass[@]}"); fi; \
	"$${runner[@]}" tests/critest/run $${CRITEST_ARGS:-}

# The busybox of critest's test images: Debian's dynamically linked one (package `busybox`,
# which conflicts with the busybox-static the guest image uses, so it is extracted, not
# installed), whose sh execs applets by path as the upstream image's does.
CRITEST_BUSYBOX := $(CARAPACE_CACHE)/critest-busybox/bin/busybox
critest-busybox: deps
	@[ -x $(CRITEST_BUSYBOX) ] || { d=$$(mktemp -d); \
	  (cd $$d && { apt-get download -qq busybox 2>/dev/null || { apt-get update -qq && apt-get download -qq busybox; }; }) && \
	  dpkg-deb -x $$d/busybox_*.deb $$d/x && mkdir -p $(dir $(CRITEST_BUSYBOX)) && \
	  cp $$d/x/bin/busybox $(CRITEST_BUSYBOX).tmp && mv $(CRITEST_BUSYBOX).tmp $(CRITEST_BUSYBOX); \
	  rc=$$?; rm -rf $$d; exit $$rc; }

bench-boot: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-boot
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	if $(BIN)/carapace check >/dev/null 2>&1; then $(BIN)/bench-boot; else \
	  tests/testhost/run --smp 1 --timeout 3000 -- env CARAPACE_VMM_KICK_MS=100 $(BIN)/bench-boot; fi

# Container start (agent CreateContainer + StartContainer) in one pod VM against runc create +
# start of the same busybox rootfs, both in the same test host run (BENCH_N, default 20).
bench-container: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-container
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	if $(BIN)/carapace check >/dev/null 2>&1; then $(BIN)/bench-container; else \
	  tests/testhost/run --smp 1 --timeout 3000 -- env CARAPACE_VMM_KICK_MS=100 $${BENCH_N:+BENCH_N=$$BENCH_N} $(BIN)/bench-container; fi

# The CRI lifecycle of N pods (BENCH_N, default 10) through `carapace serve`, per step, with a
# local docker-registry serving the test images.
# crictl exec round trip and exec stdout throughput, carapace against containerd + runc.
bench-exec: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-exec
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	if $(BIN)/carapace check >/dev/null 2>&1; then $(BIN)/bench-exec; else \
	  tests/testhost/run --smp 1 --timeout 3000 -- env CARAPACE_VMM_KICK_MS=100 $${BENCH_N:+BENCH_N=$$BENCH_N} $${BENCH_MIB:+BENCH_MIB=$$BENCH_MIB} $(BIN)/bench-exec; fi

bench-cri: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-cri
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	if $(BIN)/carapace check >/dev/null 2>&1; then $(BIN)/bench-cri; else \
	  tests/testhost/run --smp 1 --timeout 3000 -- env CARAPACE_VMM_KICK_MS=100 $${BENCH_N:+BENCH_N=$$BENCH_N} $(BIN)/bench-cri; fi

# Host memory per idle pod: N busybox pods (BENCH_N, default 20) through `carapace serve` (VMM
# PSS, guest memory included, plus the pod's files in RAM) against N containerd + runc pods (shim
# and container PSS), in one test host run; last line
# `density: carapace <X> MiB per pod, runc <Y> MiB per pod, ratio <X/Y> over <N> pods`.
bench-density: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-density
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	bench=(env $${BENCH_N:+BENCH_N=$$BENCH_N} $${BENCH_SETTLE_S:+BENCH_SETTLE_S=$$BENCH_SETTLE_S} $(BIN)/bench-density); \
	if $(BIN)/carapace check >/dev/null 2>&1; then "$${bench[@]}"; else \
	  tests/testhost/run --smp 1 --mem 8192 --timeout 3000 -- env CARAPACE_VMM_KICK_MS=100 "$${bench[@]}"; fi

# Host <-> agent vsock throughput (a container's stdout through ReadStdio) and round-trip latency
# (Health RPCs) in one pod VM; last line `vsock: throughput <X> MiB/s, rr median <Y> us`.
bench-vsock: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-vsock
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	if $(BIN)/carapace check >/dev/null 2>&1; then $(BIN)/bench-vsock; else \
	  tests/testhost/run --smp 1 --timeout 600 -- env CARAPACE_VMM_KICK_MS=100 $${BENCH_VSOCK_MIB:+BENCH_VSOCK_MIB=$$BENCH_VSOCK_MIB} $(BIN)/bench-vsock; fi

# TCP throughput (BENCH_NET_MIB MiB, default 64, BENCH_NET_RUNS runs, default 5) and 1-byte
# request/response latency (BENCH_NET_RR round trips, default 1000) from the host to a server in a
# carapace pod and in a containerd + runc pod on the same CNI conflist (bridge + host-local +
# portmap + loopback, Debian's plugins), in one run; last line
# `net: carapace <X> Mbit/s, runc <Y> Mbit/s, ratio <X/Y>; rr carapace <A> us, runc <B> us, ratio <A/B>`.
bench-net: build guest-image
	$(CARGO) build --release --locked -p carapace-tests --bin bench-net
	export CARAPACE_BIN=$(BIN)/carapace CARAPACE_GUEST_DIR=$(GUEST_DIR); \
	bench=(env $${BENCH_NET_MIB:+BENCH_NET_MIB=$$BENCH_NET_MIB} $${BENCH_NET_RUNS:+BENCH_NET_RUNS=$$BENCH_NET_RUNS} \
	  $${BENCH_NET_RR:+BENCH_NET_RR=$$BENCH_NET_RR} $(BIN)/bench-net); \
	if $(BIN)/carapace check >/dev/null 2>&1; then "$${bench[@]}"; else \
	  tests/testhost/run --smp 1 --timeout 3000 -- env CARAPACE_VMM_KICK_MS=100 "$${bench[@]}"; fi

# Coverage-guided fuzzing (crates/fuzz, libFuzzer on the stable toolchain, one target at a time):
# every target for FUZZ_SECONDS (default 60) each, or only FUZZ_TARGETS; found inputs in
# FUZZ_DIR/corpus, crashes in the FUZZ_DIR/run-<time>/crashes it names; last line
# `fuzz: <T> targets, <N> execs, <C> crashes`. The corpora run as tests in test-unit.
FUZZ_SECONDS ?= 60
FUZZ_DIR ?= $(CARAPACE_CACHE)/fuzz
FUZZ_TARGETS ?=
fuzz: deps
	crates/fuzz/run $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_TARGETS)

# Pulls one image from a local registry with carapace's puller and with `skopeo copy` (no VM needed).
bench-pull: deps
	$(CARGO) run --release --locked -p carapace-image --example bench-pull
