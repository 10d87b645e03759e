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
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
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

# build_release: builds the release `lanyard` binary as shipped and prints its path.
# Statically linked (glibc, `-C target-feature=+crt-static`), which saves the dynamic
# loader's work, ~0.4 ms of every invocation; and not position independent
# (`-C relocation-model=static`), which saves the start-up relocation of ~8300
# pointers and the copy-on-write of the 30 pages they live in: 0.1-0.4 ms per
# attach+detach cycle, measured side by side with scripts/bench-attach --baseline.
# The price: lanyard's own code and data sit at fixed addresses (stack, heap, mmap
# and libnftables are still randomised). LANYARD_PIE=1 builds a static-pie binary
# instead, for packagers whose policy requires PIE. libnftables is loaded with
# dlopen on first firewall use; glibc's static dlopen needs the same glibc at run
# time, which a Debian package build guarantees. --target keeps build scripts and
# proc-macros dynamic (they cannot be static). With crates/lanyard/hot-symbols.txt
# (scripts/hot-symbols), the functions of an attach + detach are laid out first in
# .text: 5-9% less CPU per cycle. LANYARD_NO_ORDER=1 builds without that layout.
build_release() {
  local flags="-C target-feature=+crt-static" order=crates/lanyard/hot-symbols.txt
  [ "${LANYARD_PIE:-0}" = 1 ] || flags="$flags -C relocation-model=static"
  # cargo rustc: extra flags (after --) reach the final link of the lanyard crate only.
  release_link() {
    RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo rustc --release -q -p lanyard --bin lanyard \
      --target "$(host_triple)" -- "$@" >&2
  }
  if [ "${LANYARD_NO_ORDER:-0}" = 1 ] || [ ! -s "$order" ]; then
    release_link || return 1
  else
    # The hot functions first (scripts/hot-symbols). lld takes the file; a linker
    # that does not fails the link, and the binary is built without it.
    mkdir -p target
    grep -v '^#' "$order" >target/hot-symbols.ld
    if ! release_link -C link-arg=-Wl,--symbol-ordering-file="$PWD/target/hot-symbols.ld" \
      -C link-arg=-Wl,--no-warn-symbol-ordering; then
      say "the link with $order failed (not lld?): building without it"
      release_link || return 1
    fi
    hot_symbols_report "$(release_bin)" target/hot-symbols.ld
  fi
  release_bin
}

# hot_symbols_report BIN LIST: says how many of the functions in LIST the binary
# has; fewer mean scripts/hot-symbols is due (a new rustc or dependency renamed them).
hot_symbols_report() {
  local have total
  total=$(wc -l <"$2")
  have=$(nm "$1" 2>/dev/null | awk 'NR == FNR { want[$0] = 1; next } ($NF in want) { n++ } END { print n + 0 }' "$2" -)
  say "hot-symbols: the binary has $have of the $total functions laid out first"
  [ "$have" -ge $((total * 8 / 10)) ] || say "hot-symbols: stale; run scripts/hot-symbols"
}

# host_triple: the target triple of this machine's Rust toolchain.
host_triple() { rustc -vV | sed -n 's/^host: //p'; }

# release_bin: where build_release puts the binary (run from the repo root).
release_bin() { printf '%s\n' "$PWD/target/$(host_triple)/release/lanyard"; }
