# Two entry points on a fresh Debian machine (root): `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := mosquitto docker-registry apache2-utils buildah debootstrap podman runc git postgresql \
	qemu-user-static binfmt-support

.PHONY: demo test install system-packages emulation venv lint clean

demo: install
	$(PY) scripts/demo.py

test: install
	$(VENV)/bin/pytest -q

install: system-packages emulation venv

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  systemctl disable --now mosquitto docker-registry postgresql >/dev/null 2>&1 || true; \
	fi

# arm64 images are built and run under qemu-user-static; says in one line when this host cannot.
emulation: system-packages
	@sh scripts/enable_emulation.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml utils_pkg/pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e utils_pkg -e '.[dev]'
	touch $@

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPYPATH=utils_pkg $(VENV)/bin/mypy manager services orchestrator_adapters utils_pkg/flops_utils

clean:
	rm -rf $(VENV)
