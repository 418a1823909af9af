# Conveniences over scripts/ (which install what they need; run as root).
.PHONY: deps rows demo test test-quick bench deb

deps:
	./scripts/deps.sh

# the text rows' C module, in place (deps does it too; no root needed)
rows:
	./scripts/build-rows.sh

demo:
	./scripts/demo.sh

test:
	./scripts/test.sh

# unit, host and package stages (no qemu guests: a local run, their rows say
# "not run (allowed)"; CI runs them all)
test-quick:
	./scripts/test.sh --no-guest --allow-missing

bench: deps
	/usr/bin/python3 bench/run.py

# the Debian package, built from an export of HEAD (not in the work tree), into dist/
deb:
	./scripts/build-deb.sh dist
