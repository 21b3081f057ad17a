# Sourced by the tests that run Sphere in containers (test-compose, test-systemd). Expects $root
# (the repository) and $work (a scratch directory). No image registry answers on these machines,
# so images start from a Debian base made with debootstrap.

base_image=sphere-base:bookworm

# A running docker daemon; docker.io, debootstrap and the given Debian packages are installed when
# missing (needs root).
docker_up() {
  local tool
  for tool in dockerd debootstrap "$@"; do
    if ! command -v "$tool" >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap "$@"
      break
    fi
  done
  if ! docker info >/dev/null 2>&1; then
    (setsid dockerd --iptables=false --storage-driver=vfs >"$root/target/dockerd.log" 2>&1 &)
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null
  fi
  if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    debootstrap --variant=minbase --include=ca-certificates,python3 bookworm "$work/rootfs" >"$work/debootstrap.log"
    tar -C "$work/rootfs" -c . | docker import - "$base_image" >/dev/null
    rm -rf "$work/rootfs"
  fi
}
