#!/usr/bin/env bash
# Boot a kernel + rootfs image under QEMU microvm (TCG) and prove it reaches userspace and
# answers SSH with the host key its manifest records, as the given key's owner.
#
# Usage: ci/boot-check.sh KERNEL IMAGE MANIFEST PRIVATE_KEY [USER]
# Env:   BOOT_TIMEOUT  seconds before giving up (default 180; TCG is slow)
#        SERIAL_LOG    where the guest console goes (default: a temp file, printed on failure)
#        GUEST_CHECK   a shell command run in the guest over the same SSH login once it answers;
#                      its output is printed as `boot-check: guest: ...` and a failure fails the check
set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: $0 KERNEL IMAGE MANIFEST PRIVATE_KEY [USER]" >&2
  exit 2
fi
kernel=$1 image=$2 manifest=$3 key=$4 user=${5:-root}
timeout_s=${BOOT_TIMEOUT:-180}
work=$(mktemp -d)
serial=${SERIAL_LOG:-$work/serial.log}
qemu_pid=
cleanup() {
  if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The guest writes to its root: boot a throwaway copy (sparse, so cheap).
cp --sparse=always "$image" "$work/root.ext4"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hostkey=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ssh_host_key"])' "$manifest")
echo "[127.0.0.1]:$port $hostkey" >"$work/known_hosts"

start=$(date +%s%N)
# tsc_early_khz is omitted: the tiny kernel calibrates fine under TCG; random.trust_cpu with
# -cpu max gives the SSH server entropy at once.
timeout "$timeout_s" qemu-system-x86_64 -M microvm,acpi=off -accel tcg -cpu max -m 512 -smp 2 \
  -nographic -nodefaults -no-reboot -serial "file:$serial" \
  -kernel "$kernel" \
  -append "console=ttyS0 root=/dev/vda rw panic=-1 random.trust_cpu=on ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off" \
  -drive "id=root,file=$work/root.ext4,format=raw,if=none" -device virtio-blk-device,drive=root \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-device,netdev=n0 \
  2>"$work/qemu.err" &
qemu_pid=$!

fail() {
  echo "boot-check: $*" >&2
  echo "---- qemu ----" >&2
  cat "$work/qemu.err" >&2 || true
  echo "---- serial console ----" >&2
  tail -n 40 "$serial" >&2 || true
  exit 1
}

deadline=$((SECONDS + timeout_s))
until grep -q "fireclaw-init: userspace up" "$serial" 2>/dev/null; do
  kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited before userspace"
  ((SECONDS < deadline)) || fail "no userspace within ${timeout_s}s"
  sleep 0.2
done
userspace=$(date +%s%N)
echo "boot-check: userspace after $(((userspace - start) / 1000000)) ms"

ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 -o StrictHostKeyChecking=yes
  -o "UserKnownHostsFile=$work/known_hosts" -o HostKeyAlgorithms=ssh-ed25519 -i "$key" -p "$port")
until out=$(ssh "${ssh_opts[@]}" "$user@127.0.0.1" 'echo ok; id -un; cat /etc/hostname' 2>"$work/ssh.err"); do
  kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited before SSH answered"
  ((SECONDS < deadline)) || fail "no SSH login within ${timeout_s}s: $(cat "$work/ssh.err")"
  sleep 1
done
sshed=$(date +%s%N)
echo "boot-check: SSH login as $(echo "$out" | sed -n 2p) on $(echo "$out" | sed -n 3p) after $(((sshed - start) / 1000000)) ms (host key pinned from the manifest)"

if [[ -n ${GUEST_CHECK:-} ]]; then
  # shellcheck disable=SC2029 # the command is meant to run in the guest as given
  if ! got=$(ssh "${ssh_opts[@]}" "$user@127.0.0.1" "$GUEST_CHECK" 2>&1); then
    fail "GUEST_CHECK failed: $got"
  fi
  while IFS= read -r line; do echo "boot-check: guest: $line"; done <<<"$got"
fi
