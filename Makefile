# Conveniences over scripts/ (which install what they need; run as root).
.PHONY: deps demo test test-quick bench deb

deps:
	./scripts/deps.sh

demo:
	./scripts/demo.sh

test:
	./scripts/test.sh

# unit, host and package stages (no qemu guests)
test-quick:
	./scripts/test.sh --no-guest

bench: deps
	/usr/bin/python3 bench/run.py

# the Debian package, built from an export of HEAD (not in the work tree), into dist/
deb:
	./scripts/build-deb.sh dist
