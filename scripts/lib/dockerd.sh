# shellcheck shell=bash
# A throwaway dockerd (Debian's docker.io, 20.10) in a lab network namespace, as the
# lab tests start it (crates/lanyard/tests/lab/docker.rs): sourced, not run; needs
# scripts/lib/common.sh first.
#
# dockerd runs inside the lab namespace NETNS (a path) and a private mount namespace
# of its own, where /run/docker/plugins is an empty tmpfs holding one link,
# lanyard.sock -> PLUGIN_SOCK (the lab lanyard daemon's --docker-socket): the
# machine's own /run/docker/plugins, network namespace and Docker setup are never
# touched. Its data, exec root, API socket and log live under DIR. No bridge, no
# iptables: containers get only the networks a run asks for.

# dockerd_start NETNS DIR PLUGIN_SOCK: starts dockerd, waits until it answers (30 s at
# most) and sets DOCKERD_PID and DOCKER (the `docker` command against it, an array).
dockerd_start() {
  local netns=$1 dir=$2 plug=$3 i
  command -v dockerd >/dev/null || die "dockerd missing (apt-get install docker.io)"
  mkdir -p "$dir"
  unshare -m --propagation private sh -c '
    mkdir -p /run/docker/plugins && mount -t tmpfs tmpfs /run/docker/plugins &&
    ln -s "$2" /run/docker/plugins/lanyard.sock &&
    exec nsenter --net="$0" dockerd --data-root "$1/data" --exec-root "$1/x" \
      -H "unix://$1/docker.sock" --pidfile "$1/pid" --bridge=none --iptables=false \
      --ip6tables=false --shutdown-timeout 1' "$netns" "$dir" "$plug" >"$dir/log" 2>&1 &
  DOCKERD_PID=$!
  DOCKER=(docker -H "unix://$dir/docker.sock")
  for i in $(seq 150); do
    "${DOCKER[@]}" version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.2
  done
  die "dockerd did not start: $(tail -n 20 "$dir/log")"
}

# in_dockerd_mnt CMD...: runs CMD in dockerd's mount namespace (where its sandbox
# keys, the containers' namespace files, are mounted), so `lanyard daemon` run this
# way finds the namespaces Join names, as on a real host; the network namespace is
# the caller's.
in_dockerd_mnt() { nsenter --mount="/proc/$DOCKERD_PID/ns/mnt" -- "$@"; }

# dockerd_stop: stops the dockerd of dockerd_start (SIGTERM lets it stop its
# containerd; its mounts go with its mount namespace), SIGKILL after 15 s.
dockerd_stop() {
  [ -n "${DOCKERD_PID:-}" ] || return 0
  local i
  kill "$DOCKERD_PID" 2>/dev/null || true
  for i in $(seq 150); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=
}

# docker_busybox_image DIR NAME: imports busybox-static's binary (with `true` and
# `sh` links) as image NAME into the dockerd of dockerd_start; DIR is scratch space.
docker_busybox_image() {
  local dir=$1 name=$2
  [ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
  mkdir -p "$dir/rootfs/bin"
  cp /bin/busybox "$dir/rootfs/bin/"
  for l in true sh sleep ip ping nc wget httpd cat; do ln -sf busybox "$dir/rootfs/bin/$l"; done
  tar -C "$dir/rootfs" -cf "$dir/image.tar" .
  "${DOCKER[@]}" import "$dir/image.tar" "$name" >/dev/null || die "docker import failed"
}
