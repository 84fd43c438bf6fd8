#!/usr/bin/env bash
# Boot to running: the boot suite's nspawn guest (real systemd, our .deb, a private
# dockerd on this machine, or Podman inside the guest) with N containers (1, 10, 40),
# from the guest's systemd start to the last container's own start time (inspect
# .State.StartedAt), first and second boot, against the same guest with the hand-written
# units of the original ISO question (ExecStartPre=-docker load at every start, docker
# run --rm; podman load, podman run for Podman), and a third boot of those without the
# load lines (`run` alone: the engine's floor).
# System containers (BENCH_ENGINES=…,system; BENCH_SYSTEM of them, default 2): ours from
# .tar archives in ostree/ against hand-written units that extract the layers with tar at
# every start and `runc run` the bundle, from each container's `runc state` creation
# time; then ours with checkouts staged at build time (`stage --system --checkout`).
# Each image: busybox plus BENCH_MB (20) of its own data. Needs what the boot suite needs
# (root, .ci/install-deps). One run per cell. BENCH_VERBOSE=1 prints each system-container
# guest's journal (where the time goes).
# Usage: [BENCH_ENGINES=docker,podman,system] [BENCH_UNITS=1,10,40] [BENCH_SYSTEM=2]
#        [BENCH_MB=20] bench/boot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked --test boot -- --ignored bench_boot_to_running --nocapture --test-threads=1 2>&1 |
  grep '^|'
