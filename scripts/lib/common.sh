# shellcheck shell=bash
# Helpers shared by scripts/test and scripts/vm-test (sourced, not run).

# say MSG: a progress line on stderr.
say() { printf '%s: %s\n' "${SCRIPT:-${0##*/}}" "$*" >&2; }

# die MSG: says what went wrong and stops.
die() { printf '%s: FAILED: %s\n' "${SCRIPT:-${0##*/}}" "$*" >&2; exit 1; }

# now: seconds since the epoch, with milliseconds.
now() { date +%s.%3N; }

# since T0: seconds elapsed since T0 (from `now`), one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# missing_packages PKG...: prints those of the Debian packages not installed.
missing_packages() {
  local p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || printf '%s\n' "$p"
  done
}

# ensure_packages PKG...: installs the missing ones (apt-get update only if needed).
ensure_packages() {
  local need
  mapfile -t need < <(missing_packages "$@")
  [ "${#need[@]}" -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages (${need[*]}); run as root to install them"
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No package may start its service here (docker.io would start dockerd in this
  # machine's own network namespace, with its bridge and iptables rules): a
  # policy-rc.d that refuses every start, for the install only, unless one is there.
  local policy=/usr/sbin/policy-rc.d own=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# lanyard scripts/test: no service starts during its installs\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own=1
  fi
  apt-get update -qq || { [ "$own" = 0 ] || rm -f "$policy"; die "apt-get update failed"; }
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { [ "$own" = 0 ] || rm -f "$policy"; die "apt-get install ${need[*]} failed"; }
  [ "$own" = 0 ] || rm -f "$policy"
}

# test_executables JSON: "exe<TAB>package dir" for every test binary in cargo's
# `--message-format=json` output JSON (a file), one per line.
test_executables() {
  grep '"reason":"compiler-artifact"' "$1" | grep -E '"profile":\{[^}]*"test":true' | grep '"executable":"/' \
    | sed -E 's/.*"manifest_path":"([^"]*)\/Cargo\.toml".*"executable":"([^"]*)".*/\2\t\1/' | sort -u
}

# vm_tests EXE: the tests of a test binary whose own name (last path segment) starts
# with vm_ — the ones that run in the kernel VM, never on the host.
vm_tests() {
  "$1" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | awk -F'::' '$NF ~ /^vm_/'
}

# build_release: builds the release `lanyard` binary as shipped and prints its path:
# plain `cargo build --release`, a dynamically linked position-independent
# executable (the toolchain's defaults; [profile.release] in Cargo.toml, the bundled
# SQLite's build flags in .cargo/config.toml).
build_release() {
  cargo build --release -q -p lanyard --bins >&2 || return 1
  release_bin
}

# release_bin: where build_release puts the binary (run from the repo root).
release_bin() { printf '%s\n' "${CARGO_TARGET_DIR:-$PWD/target}/release/lanyard"; }
