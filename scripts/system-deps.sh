#!/usr/bin/env bash
# Installs the Debian packages the tests and demos need, only when missing.
# PostgreSQL 15 (registry tests on a real server), Fashion-MNIST (demo/bench data), wrk (bench),
# chromium (the dashboard's browser test, driven by Playwright with this system browser).
set -euo pipefail
need=()
for pkg in postgresql-15 dataset-fashion-mnist wrk chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: missing Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
