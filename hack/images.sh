#!/usr/bin/env bash
# Build the project's images here, with buildah from Debian, on a Debian base made here:
# nothing is pulled from a registry.
#
#   hack/images.sh [IMAGE...]     build what changed (default: all); prints the archive dir
#   hack/images.sh --print-dir    that directory, building nothing
#   hack/images.sh --sizes        the built images and their sizes
#
# IMAGE is one of: base (debootstrap'ed Debian 12, minbase), pause (the Kubernetes pause
# program from the kubernetes module, static), worker, operator (the Dockerfiles). Each
# lands in ${HYPER2KVM_CACHE:-~/.cache/hyper2kvm}/images/ as NAME.oci.tar (an OCI archive,
# what `ctr images import` takes) with NAME.ref (its reference) and NAME.inputs (a hash of
# everything it is built from: equal inputs, no rebuild); `pause` is the program itself. buildah's own storage, with its
# layer cache, is there too, so a change to the worker's code rebuilds only the last layers.
#
# Environment: IMAGE_PREFIX (localhost/hyper2kvm), VERSION (the package's), REVISION (the
# commit, only a label), HYPER2KVM_DEBIAN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
out="$cache/images"
prefix="${IMAGE_PREFIX:-localhost/hyper2kvm}"
version="${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/worker/hyper2kvm_worker/__init__.py")}"
revision="${REVISION:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
mirror="${HYPER2KVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump when the base's recipe below changes.
base_recipe=1
suite=bookworm
all=(base pause worker operator)

case "${1:-}" in
  --print-dir) echo "$out"; exit 0 ;;
esac

command -v buildah >/dev/null || {
  echo "images: buildah is not installed (make setup installs it from Debian)" >&2; exit 1; }
# shellcheck source=./cache-lock.sh
source "$here/cache-lock.sh"
cache_lock images
mkdir -p "$out"
buildah=(buildah --root "$out/storage" --runroot "$out/run" --storage-driver overlay)

if [[ "${1:-}" == "--sizes" ]]; then
  "${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep "^$prefix/" || true
  exit 0
fi

say() { echo "images: $*" >&2; }

# A hash of files and strings: what an image is built from.
inputs_of() {
  { for item in "$@"; do
      if [[ -e "$item" ]]; then
        (cd "$repo" && git ls-files -co --exclude-standard -- "$item" 2>/dev/null || find "$item" -type f) \
          | LC_ALL=C sort | while read -r f; do [[ -f "$repo/$f" ]] && sha256sum "$repo/$f"; done \
          | sed "s|$repo/||"
      else
        echo "$item"
      fi
    done; } | sha256sum | cut -d' ' -f1
}

up_to_date() {  # NAME INPUTS
  [[ -f "$out/$1.oci.tar" && "$(cat "$out/$1.inputs" 2>/dev/null)" == "$2" ]] &&
    "${buildah[@]}" inspect --type image "$(cat "$out/$1.ref")" >/dev/null 2>&1
}

export_archive() {  # NAME REF INPUTS
  local name=$1 ref=$2 inputs=$3
  rm -f "$out/$name.oci.tar.part"
  "${buildah[@]}" push --quiet "$ref" "oci-archive:$out/$name.oci.tar.part:$ref" >/dev/null
  mv "$out/$name.oci.tar.part" "$out/$name.oci.tar"
  echo "$ref" > "$out/$name.ref"
  echo "$inputs" > "$out/$name.inputs"
}

image_id() { "${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$1"; }

build_base() {
  local ref="$prefix/debian:$suite" inputs
  inputs="$(inputs_of "base-$base_recipe-$suite-$mirror")"
  up_to_date base "$inputs" && return
  say "base: debootstrap $suite (minbase) from $mirror"
  local root
  root="$(mktemp -d "${TMPDIR:-/tmp}/hyper2kvm-base.XXXXXX")"
  trap 'rm -rf "$root"' RETURN
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$out/base.log" 2>&1 || {
    tail -20 "$out/base.log" >&2; exit 1; }
  # As Debian's own container images: the release with its updates and security archive,
  # no documentation or translations installed, apt's caches emptied after every run.
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat > "$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* \
    "$root"/etc/machine-id "$root"/etc/resolv.conf "$root"/etc/hostname
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  : > "$root/etc/machine-id"
  local tarball="$root.tar"
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball" .
  local container
  container="$("${buildah[@]}" from scratch)"
  "${buildah[@]}" add --quiet "$container" "$tarball" / >/dev/null
  rm -f "$tarball"
  "${buildah[@]}" config --cmd /bin/bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.title=hyper2kvm-base" \
    --label "org.opencontainers.image.description=Debian $suite (minbase), debootstrapped" \
    "$container"
  "${buildah[@]}" commit --quiet --rm "$container" "$ref" >/dev/null
  export_archive base "$ref" "$inputs"
}

build_pause() {
  local ref="$prefix/pause:3.10"
  local k8s source inputs
  k8s="$(cd "$here/k8s" && GOTOOLCHAIN=local go mod download -json k8s.io/kubernetes |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  source="$k8s/build/pause/linux/pause.c"
  inputs="$(inputs_of "pause-1" "$(sha256sum "$source")")"
  up_to_date pause "$inputs" && [[ -x "$out/pause" ]] && return
  say "pause: $source, static"
  local work container
  work="$(mktemp -d "${TMPDIR:-/tmp}/hyper2kvm-pause.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  gcc -Os -Wall -Werror -static -DVERSION=v3.10-hyper2kvm -o "$work/pause" "$source"
  strip "$work/pause"
  # Also the test cluster's node init (PID 1 of each node's PID namespace): it reaps orphans.
  install -m 0755 "$work/pause" "$out/pause"
  container="$("${buildah[@]}" from scratch)"
  "${buildah[@]}" copy --quiet "$container" "$work/pause" /pause >/dev/null
  "${buildah[@]}" config --entrypoint '["/pause"]' --user 65535:65535 \
    --label "org.opencontainers.image.title=hyper2kvm-pause" "$container"
  "${buildah[@]}" commit --quiet --rm "$container" "$ref" >/dev/null
  export_archive pause "$ref" "$inputs"
}

build_dockerfile() {  # worker | operator
  local name=$1 ref="$prefix/$1:$version" base_ref="$prefix/debian:$suite" inputs
  build_base
  inputs="$(inputs_of "Dockerfile.$name" .dockerignore pyproject.toml README.md worker operator \
    "$(image_id "$base_ref")" "$version")"
  up_to_date "$name" "$inputs" && return
  say "$name: buildah bud Dockerfile.$name on $base_ref"
  local secret=()
  # pip inside the build trusts what this machine trusts (a proxy's CA, say): the bundle is
  # a build secret, mounted only while pip runs and never part of a layer.
  local ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
  [[ -r "$ca" ]] && secret=(--secret "id=pip-cert,src=$ca")
  local started=$SECONDS
  "${buildah[@]}" bud --quiet --layers --isolation chroot --pull=never \
    --build-arg "BASE_IMAGE=$base_ref" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" "${secret[@]}" \
    -f "$repo/Dockerfile.$name" -t "$ref" "$repo" >"$out/$name.log" 2>&1 || {
      tail -30 "$out/$name.log" >&2; exit 1; }
  say "$name: built in $((SECONDS - started))s"
  export_archive "$name" "$ref" "$inputs"
  # Layers of earlier builds that no image uses any more.
  "${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${all[@]}")
for name in "${names[@]}"; do
  case "$name" in
    base) build_base ;;
    pause) build_pause ;;
    worker|operator) build_dockerfile "$name" ;;
    *) echo "images: unknown image $name (one of: ${all[*]})" >&2; exit 2 ;;
  esac
done
echo "$out"
