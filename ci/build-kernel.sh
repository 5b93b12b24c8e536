#!/usr/bin/env bash
# Build the fireclaw guest kernel from the pinned source in kernel/source.toml
# and the config fragments it lists, into OUT_DIR (vmlinux, bzImage, .config).
#
# Usage: ci/build-kernel.sh OUT_DIR
# Env:   FIRECLAW_CI_CACHE  cache root (default /var/cache/fireclaw-ci); finished
#                           kernels are kept there keyed by source digest +
#                           config, so an unchanged kernel is copied, not rebuilt.
#        JOBS               make -j (default: nproc)
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
out_dir=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kdir=$repo/kernel
cache=${FIRECLAW_CI_CACHE:-/var/cache/fireclaw-ci}
jobs=${JOBS:-$(nproc)}

# A tiny reader for the flat `key = "value"` lines of source.toml; the file is
# ours and keeps to that shape.
toml_get() {
  sed -n "s/^$1[[:space:]]*=[[:space:]]*\"\\(.*\\)\"[[:space:]]*$/\\1/p" "$kdir/source.toml" | head -n1
}
src_path=$(toml_get path)
src_sha=$(toml_get sha256)
src_dir=$(toml_get dir)
src_pkg=$(toml_get package)
src_ver=$(toml_get version)
base=$(toml_get base)
fragments=$(sed -n 's/^fragments[[:space:]]*=[[:space:]]*\[\(.*\)\]/\1/p' "$kdir/source.toml" | tr -d '",')

for v in src_path src_sha src_dir base fragments; do
  if [[ -z ${!v} ]]; then
    echo "error: kernel/source.toml: could not read ${v}" >&2
    exit 1
  fi
done

if [[ ! -f $src_path ]]; then
  echo "error: $src_path missing: install $src_pkg (pinned version $src_ver) with apt-get" >&2
  exit 1
fi

# The build key covers everything that changes the output.
key=$( {
  echo "$src_sha" "$base"
  for f in $fragments; do sha256sum <"$kdir/$f"; done
  sha256sum <"$repo/ci/build-kernel.sh"
} | sha256sum | cut -c1-16)
done_dir=$cache/kernel/$key
mkdir -p "$out_dir"

if [[ -f $done_dir/vmlinux && -f $done_dir/bzImage ]]; then
  echo "kernel $key: cached in $done_dir"
  cp "$done_dir/vmlinux" "$done_dir/bzImage" "$done_dir/config" "$out_dir/"
  exit 0
fi

echo "kernel $key: verifying $src_path"
actual=$(sha256sum "$src_path" | cut -d' ' -f1)
if [[ $actual != "$src_sha" ]]; then
  echo "error: $src_path has sha256 $actual, kernel/source.toml pins $src_sha" >&2
  echo "       (installed package: $(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || echo none), pinned: $src_ver)" >&2
  exit 1
fi

# The extracted tree is reused across builds of the same source (extraction
# alone costs about a minute); builds go out-of-tree so the tree stays clean.
tree=$cache/kernel-src/$src_sha
if [[ ! -f $tree/.fireclaw-extracted ]]; then
  echo "kernel $key: extracting source"
  rm -rf "$tree"
  mkdir -p "$tree"
  tar -xJf "$src_path" -C "$tree"
  touch "$tree/.fireclaw-extracted"
fi
ksrc=$tree/$src_dir

build=$(mktemp -d "$cache/kernel-build.XXXXXX")
trap 'rm -rf "$build"' EXIT

start=$(date +%s)
make -s -C "$ksrc" O="$build" ARCH=x86_64 "$base" >/dev/null
frag_paths=()
for f in $fragments; do frag_paths+=("$kdir/$f"); done
# merge_config.sh writes its scratch files to the current directory.
(cd "$build" && ARCH=x86_64 "$ksrc/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "${frag_paths[@]}" >/dev/null)
make -s -C "$ksrc" O="$build" ARCH=x86_64 olddefconfig >/dev/null

# Kconfig silently drops options whose dependencies are unmet; catch that here
# rather than at boot. RANDOM_TRUST_CPU became a boot parameter in 6.1 and is
# allowed to vanish.
missing=0
for f in "${frag_paths[@]}"; do
  name=$(basename "$f")
  while IFS= read -r line; do
    [[ $line =~ ^CONFIG_[A-Z0-9_]+= ]] || continue
    opt=${line%%=*}
    [[ $opt == CONFIG_RANDOM_TRUST_CPU ]] && continue
    if ! grep -qx -- "$line" "$build/.config"; then
      got=$(grep -E "^(# )?${opt}[= ]" "$build/.config" || echo unset)
      echo "error: $name: $line not in the final config (got: $got)" >&2
      missing=1
    fi
  done <"$f"
done
if [[ $missing -ne 0 ]]; then
  exit 1
fi

echo "kernel $key: building with -j$jobs"
make -s -C "$ksrc" O="$build" ARCH=x86_64 -j"$jobs" vmlinux bzImage
end=$(date +%s)

mkdir -p "$done_dir.tmp"
cp "$build/vmlinux" "$done_dir.tmp/vmlinux"
cp "$build/arch/x86/boot/bzImage" "$done_dir.tmp/bzImage"
cp "$build/.config" "$done_dir.tmp/config"
rm -rf "$done_dir"
mv "$done_dir.tmp" "$done_dir"
cp "$done_dir/vmlinux" "$done_dir/bzImage" "$done_dir/config" "$out_dir/"
echo "kernel $key: built in $((end - start))s: $(stat -c %s "$out_dir/bzImage") byte bzImage, $(stat -c %s "$out_dir/vmlinux") byte vmlinux"
