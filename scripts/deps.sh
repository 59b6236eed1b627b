#!/usr/bin/env bash
# Installs the packages btsp needs to build, test and run its demo — only those missing.
# Debian/Ubuntu (apt-get). Runs as root directly, otherwise through sudo.
set -euo pipefail

# libasio-dev: the asio integration and its tests; libclang-rt-14-dev: libFuzzer (clang);
# python3: small helpers in the scripts.
PACKAGES=(cmake g++ clang libclang-rt-14-dev libucx-dev ucx-utils libgtest-dev libbenchmark-dev libasio-dev pkg-config iproute2 python3)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present (${PACKAGES[*]})"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing ${missing[*]} and apt-get is not available; install them by hand" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "deps: missing ${missing[*]}; not root and no sudo available" >&2
    exit 1
  fi
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"

still=()
for p in "${missing[@]}"; do
  installed "$p" || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
  echo "deps: still missing after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "deps: done"
