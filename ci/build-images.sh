#!/usr/bin/env bash
# CI: build the static guest agent (crates/fireclaw-guest, musl), rebuild the guest kernel and
# the Debian agent test image with `fireclaw image build`, check the image's contents without
# mounting it, and boot both kernels (bzImage and the PVH vmlinux) with it under QEMU microvm
# (TCG), logging in over SSH with the host key pinned from the manifest and running the guest
# agent inside.
#
# Everything lands in the cache root, which CI keeps between runs on the same machine: the kernel
# and image are only rebuilt when kernel/, rootfs-recipes/ or the builder change (their manifests
# record the input hash), so a warm run is a few seconds plus the boots.
#
# Usage: ci/build-images.sh
# Env:   FIRECLAW_CI_CACHE  cache root (default /var/cache/fireclaw-ci)
#        FIRECLAW_BIN       fireclaw binary to use (default: cargo build, then target/debug)
#        FIRECLAW_GUEST     static guest agent to install (default: cargo build --release
#                           -p fireclaw-guest --target x86_64-unknown-linux-musl)
#        BOOT_TIMEOUT       seconds per boot (default 180)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${FIRECLAW_CI_CACHE:-/var/cache/fireclaw-ci}
out=$cache/images
mkdir -p "$cache" "$out"

if [[ $(id -u) -ne 0 ]]; then
  echo "error: building images needs root" >&2
  exit 1
fi
for tool in mmdebstrap mkfs.ext4 e2fsck debugfs qemu-system-x86_64 make gcc flex bison bc ssh python3 readelf; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool missing (apt-get install mmdebstrap e2fsprogs qemu-system-x86 build-essential flex bison bc libelf-dev openssh-client python3 linux-source-6.1)" >&2
    exit 1
  }
done

bin=${FIRECLAW_BIN:-}
if [[ -z $bin ]]; then
  (cd "$repo" && cargo build --quiet --bin fireclaw)
  bin=${CARGO_TARGET_DIR:-$repo/target}/debug/fireclaw
fi
guest=${FIRECLAW_GUEST:-}
if [[ -z $guest ]]; then
  (cd "$repo" && cargo build --quiet --release -p fireclaw-guest --target x86_64-unknown-linux-musl)
  guest=${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-musl/release/fireclaw-guest
fi
# The guest has no host libc: the agent must be static (no interpreter, no shared libraries).
if readelf -lW "$guest" | grep -q 'INTERP' || readelf -dW "$guest" | grep -q '(NEEDED)'; then
  echo "error: $guest is dynamically linked; build it for x86_64-unknown-linux-musl" >&2
  exit 1
fi
echo "ci: guest agent $guest is statically linked"

# The test guests' login key: kept in the cache so the image (which embeds the public half) stays
# cached between runs. It opens nothing but throwaway guests on this machine.
key=$cache/ci-key
if [[ ! -f $key ]]; then
  ssh-keygen -q -t ed25519 -N '' -C fireclaw-ci -f "$key"
fi

start=$(date +%s)
"$bin" image build --recipes "$repo/rootfs-recipes" --kernel-dir "$repo/kernel" \
  --cache-dir "$cache" --image-dir "$out" --authorized-key "$key.pub" --guest-agent "$guest" \
  kernel debian-test
echo "ci: kernel + debian-test ready after $(($(date +%s) - start))s"
"$bin" image list --image-dir "$out"

img=$out/debian-test.ext4
e2fsck -fn "$img" >/dev/null 2>&1 || { e2fsck -fn "$img"; exit 1; }
echo "ci: e2fsck -fn clean"

check() { # check WHAT EXPECTED REQUEST
  local got
  got=$(debugfs -R "$3" "$img" 2>/dev/null)
  if ! grep -qF -- "$2" <<<"$got"; then
    echo "error: $1: expected \"$2\" in \`debugfs -R '$3'\`, got:" >&2
    echo "$got" >&2
    exit 1
  fi
  echo "ci: image has $1"
}
check "user agent" "agent:x:1000:1000:agent:/home/agent:/bin/bash" "cat /etc/passwd"
check "agent's authorized key" "$(cut -d' ' -f1-2 "$key.pub")" "cat /home/agent/.ssh/authorized_keys"
check "root's authorized key" "$(cut -d' ' -f1-2 "$key.pub")" "cat /root/.ssh/authorized_keys"
check "SSH server" "Type: regular" "stat /usr/sbin/sshd"
check "SSH host key" "Mode:  0600" "stat /etc/ssh/ssh_host_ed25519_key"
check "fireclaw init" "fireclaw guest init" "cat /sbin/init"
check "sshd service" "/usr/sbin/sshd -D -e" "cat /etc/fireclaw/services/sshd"
check "motd file" "fireclaw debian-test image" "cat /etc/motd"
check "workspace mount" "/dev/vdb /workspace ext4" "cat /etc/fstab"
check "workspace owned by agent" "User:  1000" "stat /workspace"
check "guest agent service as agent" "exec su -s /bin/sh agent -c 'exec /usr/local/bin/fireclaw-guest run --config /etc/fireclaw/agent.toml --wait-for-config" \
  "cat /etc/fireclaw/services/fireclaw-guest"
check "guest agent mode" "Mode:  0755" "stat /usr/local/bin/fireclaw-guest"
dumped=$(mktemp)
trap 'rm -f "$dumped"' EXIT
debugfs -R "dump /usr/local/bin/fireclaw-guest $dumped" "$img" 2>/dev/null
if ! cmp -s "$dumped" "$guest"; then
  echo "error: /usr/local/bin/fireclaw-guest in the image is not $guest" >&2
  exit 1
fi
echo "ci: image has the guest agent (same bytes as $guest)"

GUEST_CHECK='/usr/local/bin/fireclaw-guest --version && fireclaw-guest health' \
  BOOT_TIMEOUT=${BOOT_TIMEOUT:-180} "$repo/ci/boot-check.sh" "$out/bzImage" "$img" "$out/debian-test.manifest.json" "$key" agent
# vmlinux boots through its PVH entry point, the way Firecracker starts it.
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180} "$repo/ci/boot-check.sh" "$out/vmlinux" "$img" "$out/debian-test.manifest.json" "$key" root
echo "ci: images built, verified and booted in $(($(date +%s) - start))s"
