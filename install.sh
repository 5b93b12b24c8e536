#!/usr/bin/env bash
# Install fireclaw and provision this host, in one command.
#
#   ./install.sh               build (or take) the binary, install it, run `fireclaw provision`
#   ./install.sh --dry-run     show what provision would do; installs nothing, changes nothing
#   ./install.sh --skip images ...   any other arguments go to `fireclaw provision`
#
# Environment:
#   FIRECLAW_BIN   use this prebuilt binary instead of building with cargo
#   FIRECLAW_ROOT  install and provision under this root prefix instead of / (tests, chroots)
set -euo pipefail

root=${FIRECLAW_ROOT:-/}
root=${root%/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

dry_run=false
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then
    dry_run=true
  fi
done

say() { printf 'install.sh: %s\n' "$*" >&2; }

binary=${FIRECLAW_BIN:-}
if [ -z "$binary" ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust (https://rustup.rs) or set FIRECLAW_BIN to a prebuilt fireclaw"
    exit 1
  fi
  say "building fireclaw (cargo build --release)"
  cargo build --release --locked --manifest-path "$here/Cargo.toml" >&2
  binary="$here/target/release/fireclaw"
fi
if [ ! -x "$binary" ]; then
  say "$binary is not an executable file"
  exit 1
fi

if [ "$dry_run" = true ]; then
  # A dry-run installs nothing: run the plan from the binary where it is.
  exec "$binary" --root "${root:-/}" provision "$@"
fi

if [ "$(id -u)" -ne 0 ]; then
  say "installing needs root: run sudo $0 $*, or add --dry-run to see the plan"
  exit 1
fi

dest="$root/usr/local/bin/fireclaw"
install -D -m 0755 "$binary" "$dest"
say "installed $dest"
exec "$dest" --root "${root:-/}" provision "$@"
