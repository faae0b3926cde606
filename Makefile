# mailseal: `make run` starts the gateway, `make test` runs the whole suite.
# Both create .venv and install what they need on a fresh Debian machine.

PYTHON ?= python3
VENV   := .venv
CONFIG ?= config/mailseal.toml
PY     := $(VENV)/bin/python
# Debian packages the tests use: age (interop reference), postfix (a real MTA
# and smtp-source/smtp-sink), swaks (a real SMTP client), openssl (`openssl cms`
# makes S/MIME AuthEnvelopedData, and opens and makes our S/MIME copies), gnupg
# and sq (Sequoia's CLI) open and make our PGP/MIME copies.
DEBIAN_TEST_PACKAGES := age postfix swaks iproute2 openssl gnupg sq
# The TypeScript age (npm age-encryption), the post-quantum interop reference,
# goes into .venv/node with the machine's npm.
TYPAGE := $(VENV)/node/node_modules/age-encryption/package.json
TYPAGE_VERSION := 0.3
# and for `make bench`: GNU time (peak memory of each measured process).
DEBIAN_BENCH_PACKAGES := $(DEBIAN_TEST_PACKAGES) time

.PHONY: run demo test mutate bench venv test-venv debian-packages typage clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

$(TYPAGE): $(VENV)/.installed
	npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error age-encryption@$(TYPAGE_VERSION)
typage: $(TYPAGE)

debian-packages:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The gateway on loopback with config/mailseal.toml: keystore and Maildirs in ./run/.
# `keys init` makes the keystore the first time (serve never does).
run: venv
	@$(VENV)/bin/mailseal -c $(CONFIG) keys init
	@$(PY) -m mailseal.demo --where $(CONFIG)
	$(VENV)/bin/mailseal -c $(CONFIG) serve

# One message through the outbound and the inbound listener, sealed then opened.
demo: venv
	$(PY) -m mailseal.demo $(CONFIG)

test: DEBIAN_PACKAGES = $(DEBIAN_TEST_PACKAGES)
test: test-venv debian-packages $(TYPAGE)
	$(PY) -m pytest -q

# Mutation testing of the security-critical modules (docs/TESTING.md): long,
# not part of `make test`. MUTATE_ARGS="--module replay" or "--sample 40 --seed 1".
mutate: DEBIAN_PACKAGES = $(DEBIAN_TEST_PACKAGES)
mutate: test-venv debian-packages $(TYPAGE)
	$(PY) tools/mutate.py $(MUTATE_ARGS)

bench: DEBIAN_PACKAGES = $(DEBIAN_BENCH_PACKAGES)
# BENCH_ARGS=--quick for a smoke run; the README's figures are full runs.
bench: $(VENV)/.installed-bench debian-packages
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bench/results run
