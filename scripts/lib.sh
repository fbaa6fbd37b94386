# shellcheck shell=bash
# Shared helpers for carve's scripts: `source "$(dirname "$0")/lib.sh"`.
# Defines the repository root, the git-ignored cache and a few small helpers.

# Repository root: the parent of the directory holding this file.
CARVE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Downloaded kernel, busybox, built initrd and run logs live here (git-ignored).
CARVE_CACHE=${CARVE_CACHE:-$CARVE_ROOT/.cache}
export CARVE_ROOT CARVE_CACHE

# `cargo install` puts binaries (defmt-print) here; make sure they are found.
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
case ":$PATH:" in
*":$CARGO_BIN:"*) ;;
*) PATH=$PATH:$CARGO_BIN ;;
esac
export PATH

# Print a message prefixed with the script's name, on stderr.
say() { echo "${0##*/}: $*" >&2; }

# Print an error and exit non-zero.
die() {
    say "error: $*"
    exit 1
}

# Install/refresh everything the scripts rely on (tools, kernel, busybox).
# Runs once per process tree: scripts that call each other skip it after the first.
carve_setup() {
    if [[ -z ${CARVE_SETUP_DONE:-} ]]; then
        "$CARVE_ROOT/scripts/setup"
        export CARVE_SETUP_DONE=1
    fi
}

# Compile a .dts into a .dtb (includes resolved from dts/ and the file's own
# directory); prints nothing unless dtc complains.
carve_dtc() { # carve_dtc IN.dts OUT.dtb
    dtc -q -I dts -O dtb -i "$CARVE_ROOT/dts" -i "$(dirname "$1")" -o "$2" "$1"
}
