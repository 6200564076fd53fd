# Sourced by the Go builds (k8s/, node/, tools/): the installed Go, exactly. A silent
# toolchain download would hide a version mismatch, and cannot work offline anyway.
export GOTOOLCHAIN=local
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "${0##*/hack/}: go not found" >&2; exit 1; }
