#!/usr/bin/env bash
# Install what the test suite needs, on Debian bookworm, as root; safe to rerun.
#
# skopeo and umoci read the images back as real consumers do, and Nix builds the
# real closures of tests/test_nix.py. Nix runs single-user, as root, without a
# sandbox, build users or substituters, so no daemon or network is needed.
# podman loads and runs images in tests/test_podman.py, a static busybox being
# the one real program inside; it is set up for a machine without systemd,
# overlayfs or a network: vfs storage, runc, no network namespace.
# docker-registry is the registry tests/test_registry.py pushes to and pulls from,
# and containerd's `ctr` imports the archives in tests/test_containerd.py. The
# tests start both themselves, on 127.0.0.1 with state in temporary folders; their
# packaged services are neither enabled nor started here (nor needed).
set -euo pipefail
cd "$(dirname "$0")/.."

NIX_CONF=/etc/nix/nix.conf
NIX_SETTINGS=(
  "sandbox = false"
  "build-users-group ="
  "experimental-features = nix-command"
  "substituters ="
)

# Packages whose service (named as the package) the tests start on their own.
SERVICE_PACKAGES=(docker-registry containerd)
POLICY_RC=/usr/sbin/policy-rc.d

CONTAINERS_CONF=/etc/containers/containers.conf
# TABLE|KEY|VALUE, each written only where the file does not set KEY in TABLE.
CONTAINERS_SETTINGS=(
  'containers|default_ulimits|["nofile=1024:1024","nproc=1024:1024"]'
  'containers|netns|"none"'
  'engine|runtime|"runc"'
)
# Once /etc/containers/storage.conf exists it replaces the packaged defaults
# wholesale, so the locations root's storage would have had are spelled out.
STORAGE_CONF=/etc/containers/storage.conf
STORAGE_SETTINGS=(
  'storage|driver|"vfs"'
  'storage|runroot|"/run/containers/storage"'
  'storage|graphroot|"/var/lib/containers/storage"'
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

# While packages install, a policy-rc.d that refuses every start keeps their
# maintainer scripts from starting a service: docker-registry ships an init script,
# which would start it even without systemd. A policy already there is the
# machine's own and is left alone.
without_service_starts() {
  if [[ -e $POLICY_RC ]]; then
    "$@"
    return
  fi
  trap 'as_root rm -f "$POLICY_RC"' EXIT
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null
  as_root chmod 755 "$POLICY_RC"
  "$@"
  as_root rm -f "$POLICY_RC"
  trap - EXIT
}

# Their maintainer scripts also enable the services for the next boot; a package
# installed here has its service disabled again (one installed before is untouched).
disable_services() {
  local package
  for package in "$@"; do
    [[ " ${SERVICE_PACKAGES[*]} " == *" $package "* ]] || continue
    if command -v systemctl >/dev/null; then
      as_root systemctl disable --quiet "$package.service" # its SysV links too
    elif [[ -x /etc/init.d/$package ]]; then
      as_root update-rc.d "$package" disable >/dev/null
    fi
  done
}

install_packages() {
  local wanted=(skopeo umoci nix-bin podman runc busybox-static "${SERVICE_PACKAGES[@]}")
  # A bare Debian has no `python`; the suite and .ci/run call it by that name.
  command -v python >/dev/null || wanted+=(python-is-python3 python3-pip python3-venv)
  mapfile -t missing < <(missing_packages "${wanted[@]}")
  if ((${#missing[@]})); then
    as_root apt-get update
    without_service_starts as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"
    disable_services "${missing[@]}"
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

# Set KEY = VALUE in the TOML table [TABLE] of FILE unless that table sets KEY
# already: added after the table's last line, or in a new table at the end.
set_toml_default() {
  local file=$1 table=$2 key=$3 value=$4 updated
  [[ -e $file ]] || as_root touch "$file"
  updated=$(awk -v table="$table" -v key="$key" -v line="$key = $value" '
    { lines[NR] = $0 }
    /^[[:space:]]*\[[^[]/ {  # a [table] header, not an [[array]] one
      current = $0
      sub(/^[[:space:]]*\[[[:space:]]*/, "", current)
      sub(/[[:space:]]*\][[:space:]]*(#.*)?$/, "", current)
      if (current == table && !at) at = NR
      next
    }
    current == table && $0 ~ ("^[[:space:]]*" key "[[:space:]]*=") { found = 1 }
    current == table && $0 ~ /[^[:space:]]/ { at = NR }
    END {
      if (found) exit 1
      for (i = 1; i <= NR; i++) { print lines[i]; if (i == at) print line }
      if (!at) { if (NR) print ""; print "[" table "]"; print line }
    }' "$file") || return 0
  printf '%s\n' "$updated" | as_root tee "$file" >/dev/null
}

# FILE then TABLE|KEY|VALUE settings, each set unless the file sets it already.
set_toml_defaults() {
  local file=$1 setting table key value
  shift
  for setting in "$@"; do
    IFS='|' read -r table key value <<<"$setting"
    set_toml_default "$file" "$table" "$key" "$value"
  done
}

configure_podman() {
  as_root mkdir -p "$(dirname "$CONTAINERS_CONF")"
  set_toml_defaults "$CONTAINERS_CONF" "${CONTAINERS_SETTINGS[@]}"
  set_toml_defaults "$STORAGE_CONF" "${STORAGE_SETTINGS[@]}"
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
configure_podman
install_python_package
