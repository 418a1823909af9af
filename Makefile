# Conveniences over scripts/ (which install what they need; run as root).
.PHONY: deps demo test test-quick bench

deps:
	./scripts/deps.sh

demo:
	./scripts/demo.sh

test:
	./scripts/test.sh

# unit and host stages only
test-quick:
	./scripts/test.sh --no-guest

bench: deps
	/usr/bin/python3 bench/run.py
