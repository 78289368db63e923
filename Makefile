# weir: `make demo` runs the built-in lab end to end; `make test` runs every test.
CLANG ?= clang
CARGO ?= cargo
IFACE ?= veth6
PREFIX ?= weir
CONFIG ?= lab/weir-lab.toml
WEIR := target/release/weir
TARGET := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
STATIC_BIN := target/$(TARGET)/release/weir

export CLANG

.PHONY: all deps build test fuzz unit lab lab-down run demo tier bench static install uninstall clean

all: build

deps:
	scripts/deps.sh

build:
	$(CARGO) build --release

# Unit tests need nothing; BPF fixture and netns end-to-end tests need root.
# With CI set, a test that would skip fails instead.
test: deps
	python3 scripts/module-cycles.py
	$(CARGO) build --release
	scripts/as-root.sh $(CARGO) test --release -- --test-threads=1

# The data-plane fuzzer (tests/fuzz.rs) at length; `make test` runs it with
# 200000 frames. WEIR_FUZZ_SEED reproduces a run; WEIR_FUZZ_REPORT_ONLY=1
# prints violations without failing.
FUZZ_FRAMES ?= 5000000
fuzz: deps
	$(CARGO) build --release
	scripts/as-root.sh env WEIR_FUZZ_FRAMES=$(FUZZ_FRAMES) $(CARGO) test --release --test fuzz -- --nocapture

unit:
	$(CARGO) test --release --lib

lab: build
	PREFIX=$(PREFIX) WEIR=$(abspath $(WEIR)) scripts/as-root.sh lab/lab.sh up

lab-down:
	PREFIX=$(PREFIX) scripts/as-root.sh lab/lab.sh down

# The design card's command: weir on the lab's balancer interface.
run: build
	@scripts/as-root.sh ip netns pids $(PREFIX)-lb >/dev/null 2>&1 || { echo "the lab is not up: run 'make lab' first"; exit 1; }
	scripts/as-root.sh ip netns exec $(PREFIX)-lb $(WEIR) run --iface $(IFACE) --config $(CONFIG)

demo: deps build
	scripts/as-root.sh scripts/demo.sh

# The tier lab (lab/tier.sh): a BGP router spreading connections over weir
# nodes with ECMP, one node killed, its route withdrawn.
tier: deps build
	scripts/as-root.sh scripts/tier-demo.sh

bench: build
	scripts/as-root.sh $(WEIR) bench --live --svg bench.svg

# Static-pie (glibc: there is no musl target here; --target is needed or the
# proc-macro crates fail), then run to prove it works. Ubuntu's libelf.a
# needs zstd: link libzstd.a then, and only then (a plain -lzstd here gave a
# binary that crashed in _init).
LIBDIR := /usr/lib/$(shell uname -m)-linux-gnu
ZSTD_FLAG = $(shell nm $(LIBDIR)/libelf.a 2>/dev/null | grep -q ZSTD_ && echo '-C link-arg=-l:libzstd.a')
static:
	LIBBPF_SYS_LIBRARY_PATH=$(LIBDIR) \
		RUSTFLAGS='-C target-feature=+crt-static $(ZSTD_FLAG)' \
		$(CARGO) build --release --features static --target $(TARGET)
	file $(STATIC_BIN)
	file $(STATIC_BIN) | grep -q "static-pie linked\|statically linked"
	$(STATIC_BIN) --version
	$(STATIC_BIN) check lab/weir-lab.toml >/dev/null
	@echo "static binary: $(STATIC_BIN)"

# Binary, systemd unit and man page. DESTDIR for packaging; the static
# binary is the release artefact (make static).
DESTDIR ?=
BINDIR ?= /usr/local/sbin
MANDIR ?= /usr/local/share/man/man8
UNITDIR ?= /etc/systemd/system
install: build
	install -D -m 0755 $(WEIR) $(DESTDIR)$(BINDIR)/weir
	install -D -m 0644 packaging/weir@.service $(DESTDIR)$(UNITDIR)/weir@.service
	install -d $(DESTDIR)$(MANDIR) $(DESTDIR)/etc/weir
	$(WEIR) man > $(DESTDIR)$(MANDIR)/weir.8
	@echo "installed: $(DESTDIR)$(BINDIR)/weir, weir@.service, weir(8); configs go in /etc/weir/IFACE.toml"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/weir $(DESTDIR)$(UNITDIR)/weir@.service $(DESTDIR)$(MANDIR)/weir.8

clean:
	$(CARGO) clean
