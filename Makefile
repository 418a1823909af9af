# Everything runs as root (eBPF, namespaces); `sudo make <target>` elsewhere.
PYTHON := /usr/bin/python3
DEB_PACKAGES := python3-bpfcc bpfcc-tools linux-headers-amd64 python3-pyroute2 \
	python3-tabulate python3-pytest iproute2 iptables ebtables bpftool kmod \
	qemu-system-x86 busybox-static xz-utils zstd iputils-ping procps util-linux

.PHONY: deps demo test test-quick bench guest

# Debian/Ubuntu packages skbtracer and its test bed need (installs only what is missing)
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# the seed's node in namespaces, one datagram through the service, traced
demo: deps
	$(PYTHON) -m testbed.demo

# unit, host (tracepoints) and guest (kprobes, qemu) tests; non-zero on any failure
test: deps
	$(PYTHON) tests/run_all.py

# unit and host stages only
test-quick: deps
	$(PYTHON) tests/run_all.py --no-guest

bench: deps
	$(PYTHON) bench/run.py
