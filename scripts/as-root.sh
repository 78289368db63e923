#!/usr/bin/env bash
# Run a command as root (sudo -E when not root already), keeping PATH so
# cargo and rustup's toolchain are found.
if [[ $(id -u) -eq 0 ]]; then exec "$@"; fi
exec sudo -E env "PATH=$PATH" "$@"
