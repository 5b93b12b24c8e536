#!/bin/sh
# Builds the tiny guest the VM tests boot when no image builder output is supplied:
# Debian's cloud kernel, an initramfs that loads the virtio-mmio modules and switches to /dev/vda,
# and an ext4 root of busybox-static + dropbear whose init applies the kernel's `ip=` parameter.
# Output (in $1): vmlinuz, initrd.img, fixture.ext4, fixture.manifest.json, id_ed25519(.pub).
# Test support only: the product boots whatever the image builder made.
set -eu
out=$1
kver=${FIXTURE_KERNEL_VERSION:-$(ls /lib/modules | grep cloud-amd64 | sort -V | tail -n1)}
[ -n "$kver" ] || { echo "no cloud-amd64 kernel in /lib/modules (apt-get install linux-image-cloud-amd64)" >&2; exit 1; }
for tool in busybox dropbear dropbearkey mkfs.ext4 cpio gzip; do
  command -v $tool >/dev/null || { echo "missing $tool (apt-get install busybox-static dropbear-bin e2fsprogs cpio)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

# initramfs
ir=$tmp/initramfs
mkdir -p $ir/bin $ir/dev $ir/proc $ir/sys $ir/newroot $ir/lib/modules
cp "$(command -v busybox)" $ir/bin/busybox
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
  f=$(find /lib/modules/$kver -name "$m.ko*" | head -n1)
  [ -n "$f" ] || { echo "module $m not found for $kver" >&2; exit 1; }
  case $f in *.xz) xz -dc "$f" >$ir/lib/modules/$m.ko ;; *.zst) zstd -qdc "$f" >$ir/lib/modules/$m.ko ;; *) cp "$f" $ir/lib/modules/$m.ko ;; esac
done
cat >$ir/init <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
  /bin/busybox insmod /lib/modules/$m.ko || echo "initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do /bin/busybox usleep 10000; i=$((i+1)); done
/bin/busybox mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; /bin/busybox sh; }
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
INIT
chmod 755 $ir/init
(cd $ir && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img"
cp /boot/vmlinuz-$kver "$out/vmlinuz"

# root filesystem
rf=$tmp/root
mkdir -p $rf/bin $rf/sbin $rf/usr/bin $rf/usr/sbin $rf/etc/dropbear $rf/root/.ssh $rf/proc $rf/sys $rf/dev $rf/tmp $rf/run $rf/var/log
cp "$(command -v busybox)" $rf/bin/busybox
for a in $($rf/bin/busybox --list); do [ -e $rf/bin/$a ] || ln -s busybox $rf/bin/$a; done
cp "$(command -v dropbear)" $rf/sbin/dropbear
# dropbear-bin is dynamically linked: bring its libraries and the loader along.
for lib in $(ldd "$(command -v dropbear)" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
  mkdir -p "$rf$(dirname "$lib")"
  cp -L "$lib" "$rf$lib"
done
echo 'root:x:0:0:root:/root:/bin/sh' >$rf/etc/passwd
echo 'root:x:0:' >$rf/etc/group
echo '/bin/sh' >$rf/etc/shells
echo 'fixture' >$rf/etc/hostname
cat >$rf/sbin/init <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
hostname fixture
ip link set lo up
for w in $(cat /proc/cmdline); do
  case $w in ip=*)
    IFS=: ; set -- ${w#ip=} ; unset IFS
    ip link set "${6:-eth0}" up
    ip addr add "$1/${4:-255.255.255.0}" dev "${6:-eth0}"
    [ -n "$3" ] && ip route add default via "$3"
    echo "fixture-init: network $1 gw $3" ;;
  esac
done
/sbin/dropbear -r /etc/dropbear/dropbear_ed25519_host_key -E -s -p 22
echo "fixture-init: ready"
trap 'sync; poweroff -f' TERM INT
while :; do wait; sleep 1; done
INIT
chmod 755 $rf/sbin/init
dropbearkey -t ed25519 -f $rf/etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1
hostkey=$(dropbearkey -y -f $rf/etc/dropbear/dropbear_ed25519_host_key | grep '^ssh-ed25519' | awk '{print $1" "$2}')
rm -f "$out/id_ed25519" "$out/id_ed25519.pub"
# An OpenSSH-format client key the image authorizes; tests copy it into their config dir.
ssh-keygen -q -t ed25519 -N '' -C fireclaw-fixture -f "$out/id_ed25519" 2>/dev/null || {
  echo "ssh-keygen missing (apt-get install openssh-client)" >&2; exit 1; }
cp "$out/id_ed25519.pub" $rf/root/.ssh/authorized_keys
chmod 700 $rf/root/.ssh; chmod 600 $rf/root/.ssh/authorized_keys
rm -f "$out/fixture.ext4"
mkfs.ext4 -q -F -L fixture -d $rf "$out/fixture.ext4" 64M
cat >"$out/fixture.manifest.json" <<JSON
{"name": "fixture", "description": "busybox + dropbear test fixture", "image": "fixture.ext4", "ssh_host_key": "$hostkey"}
JSON
echo "$out"
