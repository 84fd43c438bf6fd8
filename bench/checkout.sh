#!/usr/bin/env bash
# Benchmark a system container's first checkout and a later boot's no-op, against GNU
# tar extracting the same layers (the floor: the bytes have to be written either way),
# and `tar -xzf` of the same layers gzipped (the reference for a .tar.gz archive, whose
# every byte has to be inflated); then the first boot with a staged checkout
# (`stage --checkout`), and what that costs in the image.
# The image is made here: busybox-static plus SIZE_MB of files in three layers.
# Runs on tmpfs by default (DIR): on this VM's disk, writeback stalls swamp the
# difference being measured; the bytes written are the same for tar and for us.
# Needs: root, hyperfine, python3, gzip, zstd. Usage: bench/checkout.sh [SIZE_MB] [RUNS] [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-300}
runs=${2:-3}
cargo build --release --quiet
helper=$PWD/target/release/atomic-preload
work=$(mktemp -d -p "${3:-/dev/shm}" ap-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 - "$work" "$size_mb" <<'PY'
import hashlib, io, json, os, sys, tarfile
work, size_mb = sys.argv[1], int(sys.argv[2])
rng = os.urandom(1 << 20)
def layer(name, files):
    path = os.path.join(work, name)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for member, data, mode in files:
            ti = tarfile.TarInfo(member); ti.size = len(data); ti.mode = mode
            t.addfile(ti, io.BytesIO(data))
    return path
busybox = open("/bin/busybox", "rb").read()
layers = [layer("l0.tar", [("bin/busybox", busybox, 0o755)])]
per = size_mb // 2
for i in (1, 2):
    # Half of each layer in 1 MiB files, half in 16 KiB ones: both kinds of cost.
    files = [(f"data{i}/big-{j}", rng[j % 64:] + rng[:j % 64], 0o644) for j in range(per // 2)]
    files += [(f"data{i}/small/{j // 1000}/f{j}", rng[j % 4096:(j % 4096) + 16384], 0o644) for j in range(per // 2 * 64)]
    layers.append(layer(f"l{i}.tar", files))
ex = b'{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0},"args":["/bin/busybox","true"],"cwd":"/"},"root":{"path":"rootfs","readonly":true}}'
layers.append(layer("l3.tar", [("exports/config.json", ex, 0o644)]))
digests = ["sha256:" + hashlib.sha256(open(p, "rb").read()).hexdigest() for p in layers]
config = json.dumps({"rootfs": {"type": "layers", "diff_ids": digests}}).encode()
with tarfile.open(os.path.join(work, "image.tar"), "w") as t:
    names = []
    for i, p in enumerate(layers):
        names.append(f"l{i}/layer.tar"); t.add(p, names[-1])
    for name, data in [("config.json", config), ("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["bench/image:1"], "Layers": names}]).encode())]:
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
PY
gzip -1 -c "$work/image.tar" > "$work/image.tar.gz"
for l in "$work"/l*.tar; do gzip -1 -c "$l" > "$l.gz"; done
zstd -q -T0 -c "$work/image.tar" > "$work/image.tar.zst"

mkdir -p "$work/bin"
printf '#!/bin/sh\nexit 0\n' > "$work/bin/ok"; chmod +x "$work/bin/ok"
paths="--checkout-dir $work/co --unit-dir $work/units --tmpfiles-dir $work/tmpfiles --host-root $work/host --state-dir $work/state --systemctl $work/bin/ok --systemd-tmpfiles $work/bin/ok"
clean="rm -rf $work/co $work/units $work/tmpfiles $work/host $work/state $work/x"
echo "image: $(du -m "$work/image.tar" | cut -f1) MB uncompressed, $(find "$work" -maxdepth 1 -name 'l*.tar' | wc -l) layers"
for fmt in tar tar.gz tar.zst; do
  mkdir -p "$work/p-$fmt/ostree"; ln -f "$work/image.$fmt" "$work/p-$fmt/ostree/image.$fmt"
done
args() { echo "install-system --preload-dir $work/p-$1 --name bench --image bench/image:1 $paths"; }
# Interleaved, best of several (this machine is noisy).
hyperfine --runs "$runs" --export-markdown "$work/first.md" \
  --prepare "$clean; sync" \
  -n "tar -x of the layers (floor)" "mkdir -p $work/x && for l in $work/l*.tar; do tar -C $work/x -xf \$l; done" \
  -n "tar -xzf of the layers gzipped (.tar.gz reference)" "mkdir -p $work/x && for l in $work/l*.tar.gz; do tar -C $work/x -xzf \$l; done" \
  -n "checkout .tar" "$helper $(args tar)" \
  -n "checkout .tar.gz" "$helper $(args tar.gz)" \
  -n "checkout .tar.zst" "$helper $(args tar.zst)"
cat "$work/first.md"

# Staged: the checkout made at build time, then moved in by the first install. Each run
# uses it up, so each gets a fresh copy first (not timed).
preload=$work/sroot/var/lib/atomic/preload
mkdir -p "$work/sroot/etc"
"$helper" stage --root "$work/sroot" --system --checkout "$work/image.tar" >/dev/null
cp -a "$preload/checkouts" "$work/pristine"
echo "image cost of --checkout: $(du -sm "$preload/checkouts" | cut -f1) MB staged checkout, beside the $(du -sm "$preload/ostree" | cut -f1) MB archive"
hyperfine --runs $((runs * 2)) --export-markdown "$work/staged.md" \
  --prepare "$clean; rm -rf $preload/checkouts; cp -a $work/pristine $preload/checkouts; sync" \
  -n "first boot, staged checkout" \
  "$helper install-system --preload-dir $preload --name bench --image bench/image:1 $paths"
cat "$work/staged.md"

$clean; "$helper" $(args tar.zst) >/dev/null
hyperfine --runs 20 --warmup 2 -N -n "second boot (no-op)" "$helper $(args tar.zst)" --export-markdown "$work/second.md"
cat "$work/second.md"
