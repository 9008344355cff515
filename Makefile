# Tollgate task runner. `make run` and `make test` work on a fresh Debian 12
# machine with Swift 6.3: both install the Debian packages they need first.
SWIFT        ?= swift
RELEASE_PATH ?= $(CURDIR)/.build-release

.PHONY: all deps python build run test test-swift check-proto check-layers check-monitoring build-release proto bench fuzz clean deb test-package soak

all: build

deps:
	@tools/install-deps.sh

python: deps
	@tools/python-env.sh >/dev/null

build: deps
	$(SWIFT) build

## make run: an all-in-one development node (config, certificates and data in .dev/)
run: build
	tools/dev-node.sh "$$($(SWIFT) build --show-bin-path)"

## make test: everything CI runs
test: check-proto check-layers check-monitoring test-swift build-release

test-swift: python
	$(SWIFT) build --build-tests
	# One test at a time: several tests block a thread on child processes or
	# sockets, and in parallel they could starve the RPC handler tasks of the
	# tests beside them on a 2-core machine.
	TOLLGATE_PYTHON=$(CURDIR)/.venv/bin/python $(SWIFT) test --skip-build --no-parallel

# Release builds catch whole-module import problems debug builds miss, and are
# what the Debian package ships (Swift runtime linked statically).
build-release: deps
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(RELEASE_PATH)

## make check-layers: role logic and protocol cores import no NIO and no C module; each C module has one importer
check-layers:
	tools/check-layers.sh --self-test
	tools/check-layers.sh

## make check-monitoring: the shipped Prometheus alerting rules load, and fire (or not) as their tests say (promtool, from Debian's prometheus)
check-monitoring: deps
	promtool check rules packaging/prometheus/tollgate-alerts.yml
	promtool test rules packaging/prometheus/tollgate-alerts.test.yml

check-proto: python
	tools/generate-proto.sh --check

## make proto: regenerate the C and Swift code derived from proto/
proto: python
	tools/generate-proto.sh

## make bench: storage, message, role and gateway benchmarks (release build); nginx and wrk come from Debian
bench: deps
	@tools/install-deps.sh bench
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(RELEASE_PATH) --product tollgate-bench
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(RELEASE_PATH) --product tollgated
	$(RELEASE_PATH)/release/tollgate-bench $(BENCH)

clean:
	rm -rf .build $(RELEASE_PATH) .dev .build-deb

## make deb: the Debian package (packaging/debian) in .build-deb/, checked by lintian
deb: deps
	SWIFT_SCRATCH=$(RELEASE_PATH) tools/build-deb.sh

## make test-package: installs the package in a booted Debian 12 container and checks the nodes under systemd
test-package: deb build
	TOLLGATE_DEBUG_BIN="$$($(SWIFT) build --show-bin-path)/tollgated" tools/test-package.sh

## make fuzz: libFuzzer targets for the RPC frame and metadata decoders and the Thrift binary and compact decoders (FUZZ_SECONDS each)
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= frames metadata thrift-binary thrift-compact
fuzz: deps
	cd Fuzz && $(SWIFT) build -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
	mkdir -p Fuzz/crashes
	set -e; for t in $(FUZZ_TARGETS); do \
	    mkdir -p .build-fuzz-corpus/$$t; \
	    echo "== fuzz-$$t for $(FUZZ_SECONDS) s"; \
	    Fuzz/.build/debug/fuzz-$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -artifact_prefix=Fuzz/crashes/$$t- .build-fuzz-corpus/$$t Fuzz/corpus/$$t 2>&1 | tail -15; \
	done

## make soak: test-package with an hour-long cluster soak (SOAK_SECONDS, default 3600; docs/cluster.md)
SOAK_SECONDS ?= 3600
soak: deb build
	TOLLGATE_SOAK_SECONDS=$(SOAK_SECONDS) TOLLGATE_DEBUG_BIN="$$($(SWIFT) build --show-bin-path)/tollgated" tools/test-package.sh
