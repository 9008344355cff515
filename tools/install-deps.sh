#!/usr/bin/env bash
# Installs the Debian packages Tollgate builds and tests with, if any are
# missing (apt-get, through sudo when not root). Swift 6.3 itself is expected
# on PATH. `tools/install-deps.sh package` adds what `make deb` and
# `make test-package` need; `tools/install-deps.sh bench` what `make bench`
# measures against (nginx, wrk).
set -euo pipefail
packages=(
    pkg-config
    liblmdb-dev lmdb-utils
    libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
    libssl-dev openssl
    libsystemd-dev
    libyaml-dev
    python3 python3-venv
    thrift-compiler
    prometheus
    chromium chromium-driver curl
)
if [ "${1:-}" = "package" ]; then
    packages+=(debhelper dpkg-dev lintian debootstrap systemd-container systemd)
fi
if [ "${1:-}" = "bench" ]; then
    packages+=(nginx wrk)
fi
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
