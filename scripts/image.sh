#!/usr/bin/env bash
# Container images for the test cluster's node, built without a Docker engine (buildah) and
# without pulling from Docker Hub (a local base built with debootstrap from deb.debian.org).
#
#   scripts/image.sh base        build (or reuse) the local base image
#                                localhost/lorafleet/python:3.11-slim-bookworm; prints BASE_IMAGE=...
#   scripts/image.sh build       build (or reuse) the project's Dockerfile on that base, check it,
#                                write an archive for `ctr -n k8s.io images import`; prints
#                                IMAGE=..., ARCHIVE=..., KEY=...
#   scripts/image.sh scratch [--user UID:GID] [--ca-certs] NAME TAG BINARY [SRC:DEST ...]
#                                a FROM-scratch image holding one static binary as its entrypoint
#                                (pause, CoreDNS, the KubeRay operator); prints IMAGE/ARCHIVE/KEY
#   scripts/image.sh key         print the project image's KEY for this tree (no build)
#   scripts/image.sh paths       print KEY=VALUE lines (storage, archive folder, base image)
#   scripts/image.sh buildah ... run buildah with this script's storage (e.g. `buildah images`)
#
# Everything lives outside the clone, in ${LORAFLEET_IMAGE_CACHE:-~/.cache/lorafleet}:
# containers/storage (buildah's layer cache, overlay driver), images/<name>-<key>.tar (+ .complete)
# the archives, tmp/ buildah's temporary files. The base is keyed by a hash of its recipe (the
# functions below that make it); the project image by a hash of the build context after
# .dockerignore (Dockerfile, pyproject.toml, README.md, operator/, serving/ ...) and the base key,
# so an unchanged tree is a no-op. `buildah bud --layers` caches each step: a change to the code
# rebuilds only the last layer; a change to the dependency list rebuilds the dependency layer.
# Builds run with the host's network (no CNI, no NAT). Needs root; installs buildah, runc and
# debootstrap from Debian when missing. LORAFLEET_BUILD_JOBS is not used: buildah runs one step
# at a time, pip is single-threaded.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

cache=${LORAFLEET_IMAGE_CACHE:-$HOME/.cache/lorafleet}
storage_root=$cache/containers/storage
runroot=${LORAFLEET_BUILDAH_RUNROOT:-/run/lorafleet-buildah}
archive_dir=$cache/images
tmp_root=$cache/tmp

BASE_NAME=localhost/lorafleet/python
BASE_TAG=3.11-slim-bookworm
BASE_IMAGE=$BASE_NAME:$BASE_TAG
PROJECT_NAME=localhost/lorafleet/lorafleet
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${LORAFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${LORAFLEET_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# What the base holds beyond debootstrap's minbase (which already has bash, apt, dpkg, passwd
# (useradd/groupadd) and coreutils): Debian's Python 3.11 with venv/ensurepip, `python3` and
# `python` commands, CA certificates, and wget (KubeRay's Ray probes run `bash -c "wget ..."`).
BASE_PACKAGES=python3.11,python3.11-venv,python3,python3-venv,python-is-python3,ca-certificates,wget

log() { echo "image.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {  # [exit-code]: 0 for --help (on stdout), 2 for a usage error (on stderr)
  if [ "${1:-2}" = 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
    exit 0
  fi
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# ---- tools --------------------------------------------------------------------------------

apt_install() {  # packages...: install Debian packages (apt-get update only when needed)
  [ "$(id -u)" = 0 ] || die "installing $* needs root"
  log "installing $* from Debian"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
  fi
}

need_tools() {
  [ "$(id -u)" = 0 ] || die "buildah builds here run as root (rootless needs subuids and fuse-overlayfs)"
  local missing=()
  command -v buildah >/dev/null 2>&1 || missing+=(buildah)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v flock >/dev/null 2>&1 || missing+=(util-linux)
  # buildah's default policy.json and registries.conf come from containers-common.
  [ -f /etc/containers/policy.json ] || missing+=(golang-github-containers-common)
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

storage_driver() {
  if [ -n "${LORAFLEET_STORAGE_DRIVER:-}" ]; then echo "$LORAFLEET_STORAGE_DRIVER"; return; fi
  # overlay when the kernel has it (layers shared, not copied); vfs otherwise (works anywhere).
  if grep -qw overlay /proc/filesystems 2>/dev/null || modprobe overlay 2>/dev/null; then
    echo overlay
  else
    echo vfs
  fi
}

bh() {  # buildah with the project's own storage (survives across sessions, outside the clone)
  buildah --root "$storage_root" --runroot "$runroot" --storage-driver "$driver" "$@"
}

setup_storage() {
  driver=$(storage_driver)
  mkdir -p "$storage_root" "$archive_dir" "$tmp_root"
  # Big temporary files (layer blobs while writing archives) go under the cache, not /tmp.
  export TMPDIR=$tmp_root
  # Never ask a registry: every FROM here is a local image.
  export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-oci}
}

lock() {  # one buildah user of this storage at a time; the others wait, then reuse
  exec 9>"$archive_dir/.lock"
  flock 9
}

# ---- the base image -----------------------------------------------------------------------

# The recipe: these functions and constants are hashed into the base key, so editing any of
# them rebuilds the base (and, through the key, every image built on it).
base_rootfs() {  # dir: debootstrap bookworm into dir and make it like python:3.11-slim-bookworm
  local root=$1
  debootstrap --variant=minbase --components=main --include="$BASE_PACKAGES" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >&2
  # Apt sources and the "slim" dpkg/apt settings of Debian's official container images
  # (debuerreotype): no docs, man pages or locales; apt cleans its caches after each run.
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# The "slim" variant: files normally unnecessary in containers are excluded.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' > "$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'APT::AutoRemove::SuggestsImportant "false";\n' > "$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # Point releases and security updates, as the official images carry them.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update && apt-get -y upgrade && apt-get -y autoremove && apt-get clean' >&2 || rc=$?
  umount "$root/proc"
  [ "$rc" = 0 ] || return "$rc"
  # Drop what the slim settings exclude but debootstrap installed before they existed.
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
  # No apt lists or caches, logs, device nodes (the runtime provides /dev), or host files.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/lib/dpkg/*-old "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* \
    "$root"/dev/* "$root"/root/.cache "$root"/var/cache/ldconfig/aux-cache
  : > "$root/etc/resolv.conf"
  : > "$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
  # `python3` (python3-minimal) and `python` (python-is-python3) are Debian's links to 3.11;
  # the official image has the same two commands in /usr/local/bin.
  chroot "$root" /usr/bin/python3 -c 'import sys, ssl, sqlite3, ensurepip, venv, tomllib; assert sys.version_info[:2] == (3, 11), sys.version' >&2
  chroot "$root" /usr/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11)' >&2
}

base_key() {
  {
    declare -f base_rootfs base_commit
    echo "$DEBIAN_SUITE $DEBIAN_MIRROR $DEBIAN_SECURITY_MIRROR $BASE_PACKAGES $BASE_IMAGE"
  } | sha256sum | cut -c1-16
}

base_commit() {  # container root key: image config like the official image, commit, tag
  local ctr=$1 root=$2 key=$3 version
  version=$(chroot "$root" /usr/bin/python3 -c 'import platform; print(platform.python_version())')
  bh config --os linux --arch "$(dpkg --print-architecture 2>/dev/null || echo amd64)" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env PYTHON_VERSION="$version" \
    --cmd '["python3"]' \
    --label io.lorafleet.base-key="$key" \
    --label org.opencontainers.image.title="$BASE_IMAGE" \
    --label org.opencontainers.image.description="Debian $DEBIAN_SUITE (debootstrap minbase) with Debian's Python $version, venv, ca-certificates, wget" \
    --created-by "scripts/image.sh base ($key)" "$ctr"
  bh commit --rm --quiet "$ctr" "$BASE_IMAGE" > /dev/null
  bh tag "$BASE_IMAGE" "$BASE_NAME:$BASE_TAG-$key"
}

base_is_current() {  # key
  [ "$(bh inspect --type image --format '{{index .OCIv1.Config.Labels "io.lorafleet.base-key"}}' "$BASE_IMAGE" 2>/dev/null)" = "$1" ]
}

ensure_base() {  # (lock held) build the base unless the tagged one has this recipe's key
  local key ctr mnt started=$SECONDS
  key=$(base_key)
  if base_is_current "$key"; then return 0; fi
  log "building the base image $BASE_IMAGE ($key): debootstrap $DEBIAN_SUITE from $DEBIAN_MIRROR"
  ctr=$(bh from --name "lorafleet-base-$key" scratch 2>/dev/null) \
    || { bh rm "lorafleet-base-$key" >/dev/null 2>&1 || true; ctr=$(bh from --name "lorafleet-base-$key" scratch); }
  mnt=$(bh mount "$ctr")
  if ! base_rootfs "$mnt"; then
    umount "$mnt/proc" 2>/dev/null || true
    bh rm "$ctr" >/dev/null 2>&1 || true
    die "building the base image failed"
  fi
  base_commit "$ctr" "$mnt" "$key"
  log "built $BASE_IMAGE ($key) in $((SECONDS - started)) s"
}

cmd_base() {
  need_tools
  setup_storage
  lock
  ensure_base
  echo "BASE_IMAGE=$BASE_IMAGE"
  echo "BASE_KEY=$(base_key)"
}

# ---- the project image --------------------------------------------------------------------

# The build context after .dockerignore, hashed: relative path, mode and content of each file.
context_hash() {
  python3 - "$here" <<'PY'
import fnmatch, hashlib, os, stat, sys

root = sys.argv[1]
patterns = []
with open(os.path.join(root, ".dockerignore")) as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)


def matches(path, pattern):
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase("/".join(parts[s:end]), pattern[3:]) for s in range(end)):
                return True
        elif fnmatch.fnmatchcase("/".join(parts[:end]), pattern):
            return True
    return False


def ignored(path):
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        if matches(path, (raw[1:] if negate else raw).strip("/")):
            result = not negate
    return result


h = hashlib.sha256()
for name in ("Dockerfile", ".dockerignore"):  # both shape the build, ignored or not
    with open(os.path.join(root, name), "rb") as f:
        h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    rel_dir = "" if rel_dir == "." else rel_dir + "/"
    dirnames[:] = sorted(d for d in dirnames if not ignored(rel_dir + d))
    for name in sorted(filenames):
        rel = rel_dir + name
        if ignored(rel):
            continue
        full = os.path.join(dirpath, name)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            digest = hashlib.sha256(os.readlink(full).encode()).digest()
        else:
            with open(full, "rb") as f:
                digest = hashlib.sha256(f.read()).digest()
        h.update(f"{rel}\0{st.st_mode & 0o777:o}\0".encode() + digest)
print(h.hexdigest())
PY
}

project_key() {
  { echo "base=$(base_key)"; context_hash; declare -f build_project verify_image; } \
    | sha256sum | cut -c1-16
}

print_result() {  # image archive key
  echo "IMAGE=$1"
  echo "ARCHIVE=$2"
  echo "KEY=$3"
}

archive_path() { echo "$archive_dir/$1-$2.tar"; }  # name key

write_archive() {  # image name key: docker-archive for `ctr images import`, replacing older ones
  local image=$1 name=$2 key=$3 archive old
  archive=$(archive_path "$name" "$key")
  # Older archives of this name go first: they are GBs, and no longer what this tree builds.
  for old in "$archive_dir/$name"-*.tar "$archive_dir/$name"-*.tar.tmp; do
    [ -e "$old" ] || continue
    [[ "$(basename "$old")" =~ ^$name-[0-9a-f]{16}\.tar(\.tmp)?$ ]] || continue
    rm -f "$old" "$old.complete"
    [ "$old" = "$archive" ] || log "removed the older archive $old"
  done
  # docker-archive (`docker save` layout): ctr keeps its RepoTags name as is; layers are
  # uncompressed tars (compressing GBs of torch would cost minutes for no gain on one node).
  bh push --quiet --format v2s2 "$image" "docker-archive:$archive.tmp:$image" >&2
  mv "$archive.tmp" "$archive"
  touch "$archive.complete"
}

build_project() {  # image log: buildah bud of the repo's Dockerfile on the local base
  # The host's trust store and a pip.conf naming it are mounted into every RUN step (not into
  # any layer, not part of any cache key): pip then trusts what the host trusts, e.g. a TLS
  # inspecting egress proxy's CA. A build elsewhere needs neither.
  local mounts=$tmp_root/build-mounts
  mkdir -p "$mounts"
  cp /etc/ssl/certs/ca-certificates.crt "$mounts/ca-certificates.crt"
  printf '[global]\ncert = /run/lorafleet-build/ca-certificates.crt\ntimeout = %s\n' \
    "${PIP_DEFAULT_TIMEOUT:-120}" > "$mounts/pip.conf"
  bh bud --layers --force-rm --pull=never --network host \
    --volume "$mounts/ca-certificates.crt:/run/lorafleet-build/ca-certificates.crt:ro" \
    --volume "$mounts/pip.conf:/etc/pip.conf:ro" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg BUILDER_IMAGE="$BASE_IMAGE" \
    -f "$here/Dockerfile" -t "$1" "$here" 2>&1 | tee "$2" >&2
}

verify_image() {  # image: run the image's commands as the image's user
  local ctr rc=0
  ctr=$(bh from --pull=never --name "lorafleet-verify-$$" "$1")
  bh run --network none "$ctr" -- sh -ec '
    test "$(id -u):$(id -g)" = 10001:10001
    test "$HOME" = /home/lorafleet
    lorafleet --help > /dev/null
    lorafleet-install --help > /dev/null
    python -c "import torch, ray, lorafleet_serving, lorafleet_operator"
    command -v wget > /dev/null' >&2 || rc=$?
  [ "$rc" = 0 ] && verify_read_only "$ctr" || rc=$?
  bh rm "$ctr" > /dev/null || true
  return "$rc"
}

verify_read_only() {  # container: imports on a read-only root, HOME and TMPDIR on tmpfs (runc)
  local ctr=$1 mnt bundle rc=0
  mnt=$(bh mount "$ctr")
  bundle=$(mktemp -d "$tmp_root/verify.XXXXXX")
  bh inspect --type container "$ctr" > "$bundle/inspect.json"
  python3 - "$bundle" "$mnt" <<'PY'
import json, sys

bundle, rootfs = sys.argv[1], sys.argv[2]
image = json.load(open(f"{bundle}/inspect.json"))["OCIv1"]["config"]
uid, _, gid = image.get("User", "0:0").partition(":")
env = image.get("Env", []) + ["TMPDIR=/tmp"]
tmpfs = lambda dest: {"destination": dest, "type": "tmpfs", "source": "tmpfs",
                      "options": ["nosuid", "nodev", "mode=1777", "size=512m"]}
spec = {
    "ociVersion": "1.0.2",
    "process": {
        "user": {"uid": int(uid), "gid": int(gid or uid)},
        "args": ["sh", "-ec", 'python -c "import torch, ray, lorafleet_serving, lorafleet_operator"; '
                 "lorafleet --help > /dev/null; lorafleet-install --help > /dev/null; "
                 "! touch /opt/lorafleet/x 2>/dev/null"],
        "env": env, "cwd": image.get("WorkingDir") or "/",
        "capabilities": {k: [] for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    },
    "root": {"path": rootfs, "readonly": True},
    "hostname": "verify",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        tmpfs("/tmp"), tmpfs(image.get("WorkingDir") or "/home/lorafleet"),
    ],
    "linux": {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        "devices": [{"path": f"/dev/{n}", "type": "c", "major": 1, "minor": m, "fileMode": 0o666}
                    for n, m in (("null", 3), ("zero", 5), ("urandom", 9), ("random", 8))],
        "resources": {"devices": [{"allow": True, "access": "rwm"}]},
    },
}
json.dump(spec, open(f"{bundle}/config.json", "w"))
PY
  runc run --bundle "$bundle" "lorafleet-verify-$$" < /dev/null >&2 || rc=$?
  runc delete --force "lorafleet-verify-$$" >/dev/null 2>&1 || true
  rm -rf "$bundle"
  bh umount "$ctr" > /dev/null || true
  [ "$rc" = 0 ] || log "the image does not run on a read-only root filesystem"
  return "$rc"
}

prune_storage() {  # keep-file image: drop unnamed images this build did not use
  local keep=$1 name id
  # Older project images: untag them (their unnamed parents go with them unless still used).
  while read -r name; do
    [ "$name" = "$2" ] && continue
    bh rmi "$name" > /dev/null 2>&1 || true
  done < <(bh images --format '{{.Name}}:{{.Tag}}' --filter "reference=$PROJECT_NAME" 2>/dev/null)
  # Unnamed step images of earlier builds (the --layers cache) that this build did not use: a
  # changed dependency list leaves a multi-GB one behind each time. `rmi` also removes an
  # image's unnamed parents left without children; every step this build used keeps a child
  # or is the end of a stage, so the cache of this build survives.
  while read -r id name; do
    [ "$name" = "<none>" ] || continue
    grep -q "^${id:0:11}" "$keep" && continue
    bh rmi "$id" > /dev/null 2>&1 || true
  done < <(bh images --all --no-trunc --format '{{.ID}} {{.Name}}' 2>/dev/null | sed 's/^sha256://')
}

cmd_key() { project_key; }

cmd_build() {
  local key image archive log started=$SECONDS
  need_tools
  key=$(project_key)
  image=$PROJECT_NAME:$key
  archive=$(archive_path lorafleet "$key")
  if [ -f "$archive.complete" ]; then
    print_result "$image" "$archive" "$key"
    return 0
  fi
  setup_storage
  lock
  if [ -f "$archive.complete" ]; then
    print_result "$image" "$archive" "$key"
    return 0
  fi
  ensure_base
  log "building $image from $here/Dockerfile (first time: pip downloads torch, ray, ...)"
  log="$tmp_root/build-$key.log"
  build_project "$image" "$log" || die "buildah bud failed (log: $log)"
  log "built $image in $((SECONDS - started)) s; checking it"
  local t=$SECONDS
  verify_image "$image" || die "the image $image failed its checks"
  log "checked in $((SECONDS - t)) s; writing $archive"
  t=$SECONDS
  write_archive "$image" lorafleet "$key"
  log "archive written in $((SECONDS - t)) s"
  # Image ids of every step this build ran or reused ("--> 0123456789a", "--> Using cache
  # <id>", "FROM <id> AS deps") stay cached.
  grep -oE '(^--> (Using cache )?|FROM )[0-9a-f]{11,64}' "$log" | grep -oE '[0-9a-f]{11,64}$' \
    | cut -c1-11 | sort -u > "$log.keep"
  prune_storage "$log.keep" "$image"
  rm -f "$log" "$log.keep"
  log "done in $((SECONDS - started)) s ($(du -h "$archive" | cut -f1) archive)"
  print_result "$image" "$archive" "$key"
}

# ---- scratch images -----------------------------------------------------------------------

cmd_scratch() {
  local user=${LORAFLEET_SCRATCH_USER:-65532:65532} ca=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --user) [ $# -ge 2 ] || die "scratch: --user needs a value UID:GID"; user=$2; shift 2 ;;
      --user=*) user=${1#--user=}; shift ;;
      --ca-certs) ca=1; shift ;;
      --) shift; break ;;
      -*) die "scratch: unknown option $1" ;;
      *) break ;;
    esac
  done
  [ $# -ge 3 ] || die "usage: $0 scratch [--user UID:GID] [--ca-certs] NAME TAG BINARY [SRC:DEST ...]"
  local name=$1 tag=$2 binary=$3
  shift 3
  [[ "$name" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "scratch: bad image name $name"
  [[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "scratch: bad tag $tag"
  [ -f "$binary" ] && [ -x "$binary" ] || die "scratch: $binary is not an executable file"
  [[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || die "scratch: --user must be numeric UID[:GID]"
  local extra spec src
  for spec in "$@"; do
    src=${spec%%:*}
    [ "$spec" != "$src" ] && [ -e "$src" ] || die "scratch: $spec is not SRC:DEST with an existing SRC"
  done
  need_tools
  local key image archive bin_name
  bin_name=$(basename "$binary")
  key=$({
    echo "scratch $name $tag $bin_name $user $ca"
    sha256sum < "$binary"
    for spec in "$@"; do echo "$spec"; tar -C "$(dirname "${spec%%:*}")" -cf - --sort=name \
      --mtime=@0 --owner=0 --group=0 --numeric-owner "$(basename "${spec%%:*}")" | sha256sum; done
    [ "$ca" = 0 ] || sha256sum < /etc/ssl/certs/ca-certificates.crt
    declare -f cmd_scratch
  } | sha256sum | cut -c1-16)
  image=localhost/lorafleet/$name:$tag
  archive=$(archive_path "$name" "$key")
  if [ -f "$archive.complete" ]; then
    print_result "$image" "$archive" "$key"
    return 0
  fi
  setup_storage
  lock
  if [ ! -f "$archive.complete" ]; then
    local ctr
    ctr=$(bh from --name "lorafleet-scratch-$name-$$" scratch)
    bh copy --quiet --chmod 0755 "$ctr" "$binary" "/$bin_name" > /dev/null
    for spec in "$@"; do
      bh copy --quiet "$ctr" "${spec%%:*}" "${spec#*:}" > /dev/null
    done
    if [ "$ca" = 1 ]; then
      [ -f /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates
      bh copy --quiet --chmod 0644 "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt > /dev/null
    fi
    bh config --os linux --arch "$(dpkg --print-architecture 2>/dev/null || echo amd64)" \
      --entrypoint "[\"/$bin_name\"]" --cmd '[]' --user "$user" --workingdir / \
      --label io.lorafleet.key="$key" --created-by "scripts/image.sh scratch $name $tag" "$ctr"
    bh commit --rm --quiet "$ctr" "$image" > /dev/null
    write_archive "$image" "$name" "$key"
    log "built $image ($key)"
  fi
  print_result "$image" "$archive" "$key"
}

cmd_paths() {
  echo "BASE_IMAGE=$BASE_IMAGE"
  echo "BASE_KEY=$(base_key)"
  echo "STORAGE_ROOT=$storage_root"
  echo "RUNROOT=$runroot"
  echo "STORAGE_DRIVER=$(storage_driver)"
  echo "ARCHIVE_DIR=$archive_dir"
  local key
  key=$(project_key)
  echo "IMAGE=$PROJECT_NAME:$key"
  echo "ARCHIVE=$(archive_path lorafleet "$key")"
  echo "KEY=$key"
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    base) cmd_base ;;
    build) cmd_build ;;
    scratch) cmd_scratch "$@" ;;
    key) cmd_key ;;
    paths) cmd_paths ;;
    buildah) need_tools; setup_storage; bh "$@" ;;
    -h|--help|help) usage 0 ;;
    "") log "usage: $0 base|build|scratch|key|paths|buildah"; exit 2 ;;
    *) log "unknown command '$cmd' (usage: $0 base|build|scratch|key|paths|buildah)"; exit 2 ;;
  esac
}

main "$@"
