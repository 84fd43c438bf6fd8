#!/usr/bin/env bash
# Benchmark the generator over configs of 10, 100 and 1000 entries (release build):
# wall time with hyperfine against /bin/true, peak RSS with GNU time. STATIC=0 measures
# the dynamically linked build.
# Needs: hyperfine, time (Debian packages). Usage: bench/generator.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
# The binary `make` builds and installs (statically linked unless STATIC=0).
make --quiet build >/dev/null
gen=$PWD/$(make --no-print-directory release-dir)/atomic-preload-generator
# Output on tmpfs, as systemd gives generators (/run/systemd/generator).
work=$(mktemp -d -p /dev/shm)
trap 'rm -rf "$work"' EXIT

# A realistic mix: run with args, install with setvalues, load-only, every few an spc.
make_config() {
  local n=$1 i
  for ((i = 0; i < n; i++)); do
    printf -- '- name: container-%d\n  image: registry.example/team/app-%d:1.%d\n' "$i" "$i" "$i"
    case $((i % 4)) in
      0) printf '  run:\n    extra_args: [serve, --port, "%d", "--msg=hello world"]\n' "$((8000 + i))" ;;
      1) printf '  install:\n    setvalues: [A=1, B=two words]\n  run: {}\n' ;;
      2) printf '  archive: app-%d.tar.gz\n' "$i" ;;
      3) printf '  run:\n    spc: true\n' ;;
    esac
  done
}

echo "| entries | mean wall | vs /bin/true | peak RSS |"
echo "|---|---|---|---|"
for n in 10 100 1000; do
  root=$work/root-$n
  mkdir -p "$root/var/lib/atomic/preload" "$work/out-$n"
  make_config "$n" > "$root/var/lib/atomic/preload/config.yaml"
  # Each run starts from an empty output directory, as at boot.
  hyperfine --runs "$runs" --warmup 10 -N --export-json "$work/h-$n.json" \
    --prepare "rm -rf $work/out-$n" "/bin/true" "$gen --root $root $work/out-$n" > /dev/null
  read -r t_true t_gen < <(python3 -c '
import json,sys
r=json.load(open(sys.argv[1]))["results"]
print(r[0]["mean"], r[1]["mean"])' "$work/h-$n.json")
  rm -rf "$work/out-$n"
  rss=$(/usr/bin/time -f %M "$gen" --root "$root" "$work/out-$n" 2>&1 >/dev/null | tail -1)
  units=$(ls "$work/out-$n" | grep -c '\.service$')
  python3 -c '
import sys
n,tt,tg,rss,units=sys.argv[1:]
print(f"| {n} ({units} units) | {float(tg)*1000:.2f} ms | {float(tg)/float(tt):.2f}x ({float(tt)*1000:.2f} ms) | {int(rss)/1024:.1f} MiB |")' \
    "$n" "$t_true" "$t_gen" "$rss" "$units"
done
