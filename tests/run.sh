#!/usr/bin/env bash
# The project's test command (README): installs the real peers the tests use
# when they are missing, builds the binaries, runs every Rust test, then the
# two microVM tests (the systemd one installs the agent's .deb, built with
# `cargo xtask agent-deb`). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || need_pkgs+=(redis-server)
have redis-cli || need_pkgs+=(redis-tools)
have psql || need_pkgs+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
have socat || need_pkgs+=(socat)
have curl || need_pkgs+=(curl)
have python3 || need_pkgs+=(python3)
have systemd-analyze || need_pkgs+=(systemd)
if ((${#need_pkgs[@]})); then
  echo "installing: ${need_pkgs[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "these Debian packages are needed by the tests: ${need_pkgs[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# The integration tests run the binaries (and the library example) from target/debug.
cargo build --workspace --bins --examples
cargo nextest run --workspace --profile ci --no-fail-fast

if [ "${SOCKFWD_SKIP_VM:-0}" != 1 ]; then
  bash tests/vm/run.sh
  bash tests/vm/systemd.sh
fi
