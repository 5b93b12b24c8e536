#!/usr/bin/env bash
# Reverse install.sh: `fireclaw uninstall` (every change provision journaled), then remove the
# binaries (fireclaw, fireclaw-guest), the man page and the bash completion.
#
#   ./uninstall.sh             uninstall and remove /usr/local/bin/fireclaw and what install.sh added
#   ./uninstall.sh --dry-run   show what would be reversed; changes nothing
#
# Environment: FIRECLAW_ROOT as for install.sh.
set -euo pipefail

root=${FIRECLAW_ROOT:-/}
root=${root%/}
dest="$root/usr/local/bin/fireclaw"
man1="$root/usr/local/share/man/man1"
extras=("$root/usr/local/bin/fireclaw-guest" "$man1/fireclaw.1" "$root/usr/share/bash-completion/completions/fireclaw")

say() { printf 'uninstall.sh: %s\n' "$*" >&2; }

if [ ! -x "$dest" ]; then
  say "$dest not found: nothing to uninstall (was fireclaw installed with install.sh?)"
  exit 1
fi

if [ "${1:-}" = "--dry-run" ]; then
  "$dest" --root "${root:-/}" uninstall "$@"
  say "would remove $dest"
  for f in "${extras[@]}"; do
    if [ -e "$f" ]; then
      say "would remove $f"
    fi
  done
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  say "uninstalling needs root: run sudo $0, or add --dry-run to see the plan"
  exit 1
fi

"$dest" --root "${root:-/}" uninstall "$@"
rm -f "$dest"
say "removed $dest"
for f in "${extras[@]}"; do
  if [ -e "$f" ]; then
    rm -f "$f"
    say "removed $f"
  fi
done
# install.sh creates man1 when the distribution has none; an empty one is not worth keeping.
rmdir "$man1" 2>/dev/null || true
