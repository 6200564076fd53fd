# Sourced by every build that fills ${HYPER2KVM_CACHE:-~/.cache/hyper2kvm}: one build of a
# piece at a time. `make demo` and `make test` started together then wait for each other
# and find the piece built, instead of both writing the same files (and buildah's storage).
# The lock is held until the script exits.
cache_lock() {  # cache_lock NAME
  local dir="${HYPER2KVM_CACHE:-$HOME/.cache/hyper2kvm}"
  mkdir -p "$dir"
  exec {cache_lock_fd}>"$dir/.$1.lock"
  flock "$cache_lock_fd"
}
