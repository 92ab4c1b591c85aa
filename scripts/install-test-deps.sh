#!/usr/bin/env bash
# Install what the test suite needs, on Debian bookworm, as root; safe to rerun.
#
# skopeo and umoci read the images back as real consumers do, and Nix builds the
# real closures of tests/test_nix.py. Nix runs single-user, as root, without a
# sandbox, build users or substituters, so no daemon or network is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

NIX_CONF=/etc/nix/nix.conf
NIX_SETTINGS=(
  "sandbox = false"
  "build-users-group ="
  "experimental-features = nix-command"
  "substituters ="
)

# Only root may install; anyone may rerun the script once everything is there.
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "install-test-deps: need root for: $*" >&2
    exit 1
  fi
}

missing_packages() {
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
      echo "$package"
  done
}

install_packages() {
  local wanted=(skopeo umoci nix-bin)
  # A bare Debian has no `python`; the suite and .ci/run call it by that name.
  command -v python >/dev/null || wanted+=(python-is-python3 python3-pip python3-venv)
  mapfile -t missing < <(missing_packages "${wanted[@]}")
  if ((${#missing[@]})); then
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${missing[@]}"
  fi
}

# Append each setting whose key the file does not set yet; never change one it sets.
configure_nix() {
  as_root mkdir -p "$(dirname "$NIX_CONF")"
  [[ -e $NIX_CONF ]] || as_root touch "$NIX_CONF"
  local setting key
  for setting in "${NIX_SETTINGS[@]}"; do
    key=${setting%% =*}
    grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$NIX_CONF" ||
      echo "$setting" | as_root tee -a "$NIX_CONF" >/dev/null
  done
}

# Debian's own Python refuses pip installs (PEP 668) unless told otherwise; a
# throwaway test machine is where that is fine.
install_python_package() {
  local flags=()
  if python -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    flags+=(--break-system-packages)
  fi
  python -m pip install --quiet "${flags[@]}" -e '.[test]'
}

install_packages
configure_nix
install_python_package
