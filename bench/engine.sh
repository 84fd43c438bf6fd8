# Sourced by the load benchmarks: a private dockerd for this run, stopped by PID on exit.
# --bridge=none --iptables=false: it touches no network. Its data root is under $work
# (removed on exit with everything else there); socket and exec root are short /tmp paths
# (unix socket paths are limited to 108 bytes). Sets DOCKER_HOST; needs $work and $docker.
start_engine() {
  local ns=atomic-preload-bench-$$
  engine_dir=/tmp/apb-$$
  mkdir -p "$engine_dir"
  export DOCKER_HOST=unix://$engine_dir/docker.sock
  dockerd --bridge=none --iptables=false --ip6tables=false --data-root="$work/data" \
    --exec-root="$engine_dir/exec" --pidfile="$work/dockerd.pid" --host="$DOCKER_HOST" \
    --containerd-namespace="$ns" --containerd-plugins-namespace="$ns-plugins" \
    >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  trap 'kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null; rm -rf "$work" "$engine_dir"' EXIT
  for _ in $(seq 100); do "$docker" info >/dev/null 2>&1 && return; sleep 0.2; done
  echo "dockerd did not answer; see $work/dockerd.log" >&2
  return 1
}
