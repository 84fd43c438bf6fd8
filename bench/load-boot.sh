#!/usr/bin/env bash
# Every boot, at scale: N preload units' load stages started at once with their marks in
# place (a second boot), against a private dockerd (--bridge=none --iptables=false, own
# data root and socket, stopped by PID), with ENGINE=podman against Podman with private
# storage (overlay), or with ENGINE=containerd against a private containerd (CRI off, own
# root and socket; the archives are built with a private Podman). Images are built here
# from busybox-static.
# Needs: root, dockerd (docker.io) or podman (and containerd), busybox-static, hyperfine.
# Usage: [ENGINE=podman|containerd] bench/load-boot.sh [ARCHIVES] [RUNS]   (1, 10, 40 units)
set -euo pipefail
cd "$(dirname "$0")/.."
archives=${1:-2}
runs=${2:-5}
cargo build --release --quiet
helper=$PWD/target/release/atomic-preload
work=$(mktemp -d -p /tmp apb-XXXXXX)
docker=${DOCKER:-/usr/bin/docker}  # what the units call (Debian: docker.io 20.10)
engine=${ENGINE:-docker}
if [ "$engine" = containerd ]; then
  export CONTAINERS_STORAGE_CONF=$work/storage.conf
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/run" "$work/root" >"$CONTAINERS_STORAGE_CONF"
  printf 'version = 2\nroot = "%s"\nstate = "%s"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n' \
    "$work/ctd-root" "$work/ctd-state" "$work/ctd.sock" "$work/ctd.sock" >"$work/ctd.toml"
  containerd --config "$work/ctd.toml" >"$work/ctd.log" 2>&1 &
  ctd=$!
  trap 'kill $ctd; wait $ctd 2>/dev/null; grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l; rm -rf "$work"' EXIT
  export CONTAINERD_ADDRESS=$work/ctd.sock
  until ctr version >/dev/null 2>&1; do sleep 0.1; done
  client=podman
  save_format=(--format docker-archive)
elif [ "$engine" = podman ]; then
  export CONTAINERS_STORAGE_CONF=$work/storage.conf
  printf '[storage]\ndriver = "overlay"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/run" "$work/root" >"$CONTAINERS_STORAGE_CONF"
  # Podman's overlay driver leaves its directory mounted onto itself.
  trap 'podman rmi -af >/dev/null 2>&1; umount "$work/root/overlay" 2>/dev/null; rm -rf "$work"' EXIT
  client=podman
  save_format=(--format docker-archive)
else
  . bench/engine.sh
  start_engine
  client=$docker
  save_format=()
fi

mkdir -p "$work/preload/docker" "$work/rootfs/bin"
cp /bin/busybox "$work/rootfs/bin/"
for i in $(seq "$archives"); do
  echo "$i" > "$work/rootfs/marker"
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
  "$client" import "$work/rootfs.tar" "bench.example/image-$i:1" >/dev/null
  "$client" save "${save_format[@]}" -o "$work/preload/docker/image-$i.tar" "bench.example/image-$i:1"
done
load="$helper load --engine $engine --preload-dir $work/preload --state-dir $work/state --docker $docker"
$load >/dev/null   # the first boot: marks written
# N units at once, each checking its own image (as the generated units do).
cat > "$work/units" <<UNITS
#!/usr/bin/env bash
pids=()
for ((i = 0; i < \$1; i++)); do
  $load --image "bench.example/image-\$((i % $archives + 1)):1" >/dev/null & pids+=(\$!)
done
for p in "\${pids[@]}"; do wait "\$p" || exit 1; done
UNITS
chmod +x "$work/units"
# Each run is a new boot: /run holds no record of Podman's images yet.
forget="sh -c 'grep -ls $work /run/atomic-preload/podman-images-* | xargs -r rm -f'"
hyperfine --runs "$runs" --warmup 1 -N --prepare "$forget" --export-markdown "$work/boot.md" \
  -n "1 unit" "$work/units 1" -n "10 units" "$work/units 10" -n "40 units" "$work/units 40" >/dev/null
echo "$archives archives, marks in place, engine $engine ($client)"
cat "$work/boot.md"
