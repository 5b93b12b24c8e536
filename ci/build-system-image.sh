#!/usr/bin/env bash
# CI: build the system tier's guest image (rootfs-recipes/debian-systemd.toml: Debian bookworm
# with systemd as PID 1, Debian's cloud kernel and initramfs inside) with `fireclaw image build`,
# from the host's Debian mirror, and check it without mounting it. tests/system.rs boots it.
#
# Cached by input hash like ci/build-images.sh: the image is rebuilt only when the recipe or the
# builder changes (its manifest records the input hash), so a warm run takes a second.
#
# Usage: ci/build-system-image.sh
# Env:   FIRECLAW_CI_CACHE  cache root (default /var/cache/fireclaw-ci)
#        FIRECLAW_BIN       fireclaw binary to use (default: cargo build, then target/debug)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${FIRECLAW_CI_CACHE:-/var/cache/fireclaw-ci}
out=$cache/images
mkdir -p "$cache" "$out"

if [[ $(id -u) -ne 0 ]]; then
  echo "error: building images needs root" >&2
  exit 1
fi
for tool in mmdebstrap mkfs.ext4 e2fsck debugfs ssh-keygen; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool missing (apt-get install mmdebstrap e2fsprogs openssh-client)" >&2
    exit 1
  }
done

bin=${FIRECLAW_BIN:-}
if [[ -z $bin ]]; then
  (cd "$repo" && cargo build --quiet --bin fireclaw)
  bin=${CARGO_TARGET_DIR:-$repo/target}/debug/fireclaw
fi

# The same throwaway login key as the vm tier's images (see ci/build-images.sh).
key=$cache/ci-key
if [[ ! -f $key ]]; then
  ssh-keygen -q -t ed25519 -N '' -C fireclaw-ci -f "$key"
fi

start=$(date +%s)
"$bin" image build --recipes "$repo/rootfs-recipes" --cache-dir "$cache" --image-dir "$out" \
  --authorized-key "$key.pub" debian-systemd
echo "ci: debian-systemd ready after $(($(date +%s) - start))s"

img=$out/debian-systemd.ext4
check() { # check WHAT EXPECTED REQUEST
  local got
  got=$(debugfs -R "$3" "$img" 2>/dev/null)
  if ! grep -qF -- "$2" <<<"$got"; then
    echo "error: $1: expected \"$2\" in \`debugfs -R '$3'\`, got:" >&2
    echo "$got" >&2
    exit 1
  fi
  echo "ci: debian-systemd has $1"
}
check "systemd as /sbin/init" "/lib/systemd/systemd" "stat /sbin/init"
check "the cloud kernel" "vmlinuz-" "ls /boot"
check "its initramfs" "initrd.img-" "ls /boot"
check "root's authorized key" "$(cut -d' ' -f1-2 "$key.pub")" "cat /root/.ssh/authorized_keys"
check "a persistent journal" "Mode:  02755" "stat /var/log/journal"
check "ngircd enabled" "ngircd.service" "ls /etc/systemd/system/multi-user.target.wants"
check "ssh enabled" "ssh.service" "ls /etc/systemd/system/multi-user.target.wants"
check "networking enabled" "networking.service" "ls /etc/systemd/system/multi-user.target.wants"
