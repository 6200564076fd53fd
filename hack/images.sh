#!/usr/bin/env bash
# Build the worker and operator images with the container engine this machine has.
#   IMAGE_PREFIX  registry/repository prefix (default ghcr.io/hyper2kvm)
#   VERSION       image tag (default: the package version)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
prefix="${IMAGE_PREFIX:-ghcr.io/hyper2kvm}"
version="${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' worker/hyper2kvm_worker/__init__.py)}"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

engine=""
for candidate in docker podman buildah; do
  if command -v "$candidate" >/dev/null; then engine="$candidate"; break; fi
done
if [[ -z "$engine" ]]; then
  echo "images: no container engine found (docker, podman or buildah); install one to build" >&2
  echo "images: Dockerfile.worker and Dockerfile.operator, or build them in CI" >&2
  exit 1
fi

build=("$engine" build)
for image in worker operator; do
  echo "images: $engine building $prefix/$image:$version" >&2
  "${build[@]}" -f "Dockerfile.$image" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" -t "$prefix/$image:$version" .
done
