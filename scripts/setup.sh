#!/usr/bin/env bash
# Create .venv and install Galaxy with its test and benchmark extras. Idempotent.
# torch is pinned to the CPU build that lies on these machines' disk; letting pip pick
# torch freely would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test,bench]"
# galaxy-deploy's test runs sshd inside each emulated device (root only): install it if missing.
if [ "$(id -u)" = 0 ] && [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    openssh-server openssh-client >/dev/null
fi
