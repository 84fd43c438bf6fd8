#!/usr/bin/env bash
# Load speed: `atomic-preload load` against the engine's own `docker load -i` of the same
# file, for every archive format; .tar.zst against docker loading the uncompressed tar
# (Docker 20.10 cannot read zstd); two .tar.gz archives against docker loading them one
# after the other. A private dockerd (--bridge=none --iptables=false, own data root and
# socket, stopped by PID); the image (3 layers, SIZE_MB in all, half compressible) is made
# here. Each measurement starts from an empty engine. Interleaved rounds, best of RUNS.
# Then the same against `podman load -i` when podman is installed (private storage under
# the work dir, overlay driver as on a real host); Podman 4.3 cannot load a .tar.gz
# docker-archive, so that row compares with its load of the uncompressed tar.
# Needs: root, dockerd + Debian's docker CLI, python3, gzip, xz, bzip2, zstd, bc.
# Then against `ctr images import` with ENGINES including containerd (a private containerd).
# Usage: bench/load.sh [SIZE_MB] [RUNS]   (ENGINES="docker podman containerd" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-470}
runs=${2:-2}
cargo build --release --quiet
helper=$PWD/target/release/atomic-preload
docker=${DOCKER:-/usr/bin/docker}
work=$(mktemp -d -p /var/tmp apl-XXXXXX)
. bench/engine.sh
start_engine

python3 - "$work" "$size_mb" <<'PY'
import hashlib, io, json, os, sys, tarfile
work, size_mb = sys.argv[1], int(sys.argv[2])
noise = os.urandom(1 << 20)
text = (b"the quick brown fox jumps over the lazy dog 0123456789\n" * 20000)[: 1 << 20]
def make(tag, seed):
    layers = []
    for l in range(3):
        path = os.path.join(work, f"{tag}-l{l}.tar")
        with tarfile.open(path, "w") as t:
            for j in range(size_mb // 3):
                data = (noise if j % 2 else text)[seed + j:] + bytes([seed, l, j % 256])
                ti = tarfile.TarInfo(f"layer{l}/f{j}"); ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
        layers.append(path)
    diff_ids = ["sha256:" + hashlib.sha256(open(p, "rb").read()).hexdigest() for p in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    with tarfile.open(os.path.join(work, f"{tag}.tar"), "w") as t:
        names = []
        for i, p in enumerate(layers):
            names.append(f"{i}/layer.tar"); t.add(p, names[-1]); os.remove(p)
        for name, data in [(cname, config), ("manifest.json", json.dumps([{"Config": cname, "RepoTags": [f"bench/{tag}:1"], "Layers": names}]).encode())]:
            ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
make("one", 1)
make("two", 2)
PY
gzip -1 -k "$work/one.tar"; gzip -1 -k "$work/two.tar"
xz -1 -T0 -k "$work/one.tar"; bzip2 -1 -k "$work/one.tar"; zstd -q -T0 -k "$work/one.tar"
echo "image: $(du -m "$work/one.tar" | cut -f1) MB, 3 layers; $(nproc) cores"

timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
best() { sort -n | head -1; }
engines=${ENGINES:-docker podman containerd}
if [[ " $engines " == *" docker "* ]]; then
reset() { $docker rmi -f bench/one:1 bench/two:1 >/dev/null 2>&1 || true; rm -rf "$work/state" "$work/p"; mkdir -p "$work/p/docker"; sync; }
ours() { reset; for f in "$@"; do ln "$work/$f" "$work/p/docker/$f"; done; timed "$helper" load --preload-dir "$work/p" --state-dir "$work/state" --docker "$docker"; }
theirs() { reset; timed bash -c "for f in $*; do $docker load -q -i $work/\$f; done"; }
declare -A t
for round in $(seq "$runs"); do
  for f in one.tar one.tar.gz one.tar.xz one.tar.bz2; do
    t[docker-$f]+="$(theirs "$f") "; t[ours-$f]+="$(ours "$f") "
  done
  t[ours-one.tar.zst]+="$(ours one.tar.zst) "
  t[docker-2gz]+="$(theirs one.tar.gz two.tar.gz) "; t[ours-2gz]+="$(ours one.tar.gz two.tar.gz) "
done
b() { tr ' ' '\n' <<<"${t[$1]}" | grep . | best; }
printf '| archive | docker load | atomic-preload load | ratio |\n|---|---|---|---|\n'
for f in one.tar one.tar.gz one.tar.xz one.tar.bz2; do
  printf '| %s | %.2f s | %.2f s | %.2f |\n' "$f" "$(b docker-$f)" "$(b ours-$f)" "$(echo "$(b ours-$f) / $(b docker-$f)" | bc -l)"
done
printf '| one.tar.zst (vs docker load of one.tar) | %.2f s | %.2f s | %.2f |\n' "$(b docker-one.tar)" "$(b ours-one.tar.zst)" "$(echo "$(b ours-one.tar.zst) / $(b docker-one.tar)" | bc -l)"
printf '| two .tar.gz (docker: one after the other) | %.2f s | %.2f s | %.2f |\n' "$(b docker-2gz)" "$(b ours-2gz)" "$(echo "$(b ours-2gz) / $(b docker-2gz)" | bc -l)"
fi

if [[ " $engines " == *" podman "* ]] && command -v podman >/dev/null; then
export CONTAINERS_STORAGE_CONF=$work/storage.conf
printf '[storage]\ndriver = "overlay"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/podman-run" "$work/podman-root" >"$CONTAINERS_STORAGE_CONF"
reset() { podman rmi -f bench/one:1 bench/two:1 >/dev/null 2>&1 || true; rm -rf "$work/state" "$work/p"; mkdir -p "$work/p/docker"; sync; }
ours() { reset; for f in "$@"; do ln "$work/$f" "$work/p/docker/$f"; done; timed "$helper" load --engine podman --preload-dir "$work/p" --state-dir "$work/state"; }
theirs() { reset; timed bash -c "for f in $*; do podman load -q -i $work/\$f; done"; }
declare -A p
for round in $(seq "$runs"); do
  for f in one.tar one.tar.xz one.tar.bz2 one.tar.zst; do
    p[podman-$f]+="$(theirs "$f") "; p[ours-$f]+="$(ours "$f") "
  done
  p[ours-one.tar.gz]+="$(ours one.tar.gz) "
  p[podman-2tar]+="$(theirs one.tar two.tar) "; p[ours-2tar]+="$(ours one.tar two.tar) "
done
b() { tr ' ' '\n' <<<"${p[$1]}" | grep . | best; }
echo
printf '| archive | podman load | atomic-preload load --engine podman | ratio |\n|---|---|---|---|\n'
for f in one.tar one.tar.xz one.tar.bz2 one.tar.zst; do
  printf '| %s | %.2f s | %.2f s | %.2f |\n' "$f" "$(b podman-$f)" "$(b ours-$f)" "$(echo "$(b ours-$f) / $(b podman-$f)" | bc -l)"
done
printf '| one.tar.gz (podman 4.3 cannot; vs its load of one.tar) | %.2f s | %.2f s | %.2f |\n' "$(b podman-one.tar)" "$(b ours-one.tar.gz)" "$(echo "$(b ours-one.tar.gz) / $(b podman-one.tar)" | bc -l)"
printf '| two .tar (podman: one after the other) | %.2f s | %.2f s | %.2f |\n' "$(b podman-2tar)" "$(b ours-2tar)" "$(echo "$(b ours-2tar) / $(b podman-2tar)" | bc -l)"
reset
# Podman's overlay driver leaves its directory mounted onto itself.
umount "$work/podman-root/overlay" 2>/dev/null || true
fi

if [[ " $engines " == *" containerd "* ]] && command -v containerd >/dev/null; then
# A private containerd (CRI off, own root and socket, stopped by PID). ctr imports plain
# tar only: the compressed rows compare with its import of the uncompressed tar.
printf 'version = 2\nroot = "%s"\nstate = "%s"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n' \
  "$work/ctd-root" "$work/ctd-state" "$work/ctd.sock" "$work/ctd.sock" >"$work/ctd.toml"
containerd --config "$work/ctd.toml" >"$work/ctd.log" 2>&1 &
ctd=$!
export CONTAINERD_ADDRESS=$work/ctd.sock
until ctr version >/dev/null 2>&1; do sleep 0.1; done
ctr_() { ctr -n k8s.io "$@"; }
reset() { ctr_ images rm docker.io/bench/one:1 docker.io/bench/two:1 >/dev/null 2>&1 || true; ctr_ content prune references >/dev/null 2>&1 || true; rm -rf "$work/state" "$work/p"; mkdir -p "$work/p/docker"; sync; }
ours() { reset; for f in "$@"; do ln "$work/$f" "$work/p/docker/$f"; done; timed "$helper" load --engine containerd --preload-dir "$work/p" --state-dir "$work/state"; }
theirs() { reset; timed bash -c "for f in $*; do ctr -n k8s.io images import $work/\$f; done"; }
declare -A c
for round in $(seq "$runs"); do
  for f in one.tar one.tar.gz one.tar.zst; do
    c[ctr-$f]+="$(theirs one.tar) "; c[ours-$f]+="$(ours "$f") "
  done
done
b() { tr ' ' '\n' <<<"${c[$1]}" | grep . | best; }
echo
printf '| archive | ctr images import (of one.tar) | atomic-preload load --engine containerd | ratio |\n|---|---|---|---|\n'
for f in one.tar one.tar.gz one.tar.zst; do
  printf '| %s | %.2f s | %.2f s | %.2f |\n' "$f" "$(b ctr-$f)" "$(b ours-$f)" "$(echo "$(b ours-$f) / $(b ctr-$f)" | bc -l)"
done
reset
kill "$ctd"; wait "$ctd" 2>/dev/null || true
grep -o " $work/ctd[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
fi
