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

# Whether the flat image FILE makes semihosting calls: an A32 `svc 0x123456`
# (0xef123456) or `hlt 0xf000` (0xe10f0070), the traps semihosting uses, at
# any word of it. The board image must have neither. (grep reads all of od's
# output: with -q it would stop early, and pipefail would count od's SIGPIPE.)
carve_has_semihosting() { # carve_has_semihosting FILE
    od -An -v -tx4 -w4 "$1" | grep -x ' \(ef123456\|e10f0070\)' >/dev/null
}

# --- QEMU runs (scripts/run, scripts/bench) -----------------------------------

# QEMU's -icount for the measured runs: one instruction is 1 ns of guest time
# (shift=0), and the virtual clock never follows the host's (sleep=off: an idle
# CPU jumps to its next timer deadline). With the default sleep=on, host time
# leaks in while QEMU starts and while the CPU idles, so the same boot read
# differently from run to run (the monitor's first instruction came 1.3 ms to
# 27 ms after reset depending on host load); with sleep=off a run repeats to
# the counter tick.
CARVE_ICOUNT=shift=0,sleep=off

# Print the QEMU binary for a virt machine with MB MiB of RAM at 0x40000000:
# qemu-system-arm up to 3072 MiB; above that RAM ends past 4 GiB, where
# qemu-system-arm 7.2 cannot run Linux (see scripts/native), so
# qemu-system-aarch64 (same machine with -cpu cortex-a15).
carve_qemu_bin() { # carve_qemu_bin MB
    if (($1 > 3072)); then echo qemu-system-aarch64; else echo qemu-system-arm; fi
}

# Die with a pointer to scripts/setup unless every named tool is installed.
carve_need_tools() { # carve_need_tools TOOL...
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || die "$t not found: run scripts/setup"
    done
}

# Print a size (768M, 1G, 1GiB, 262144K, 4096k; a bare number is MiB) in KiB.
carve_size_kib() { # carve_size_kib SIZE
    local s=${1,,} n unit
    s=${s%ib}
    s=${s%b}
    [[ $s =~ ^([0-9]+)([kmg]?)$ ]] || die "not a size: $1 (e.g. 768M, 1G, 262144K)"
    n=$((10#${BASH_REMATCH[1]}))
    unit=${BASH_REMATCH[2]:-m}
    case $unit in
    k) echo "$n" ;;
    m) echo $((n * 1024)) ;;
    g) echo $((n * 1024 * 1024)) ;;
    esac
}

# From a guest's console log: the CARVE-MEMINFO block, markers included.
carve_meminfo_block() { # carve_meminfo_block UART_LOG
    tr -d '\r' <"$1" | sed -n '/^CARVE-MEMINFO-BEGIN/,/^CARVE-MEMINFO-END/p'
}

# From a guest's console log: the value in kB of a meminfo field (LowTotal...),
# empty if absent.
carve_meminfo_kb() { # carve_meminfo_kb UART_LOG FIELD
    carve_meminfo_block "$1" | awk -v f="$2:" '$1 == f { print $2; exit }'
}

# From a guest's console log: "COUNT HZ" of the first CARVE-CNTVCT line (the
# virtual counter when /init starts; `last` for the one just before power-off).
carve_cntvct() { # carve_cntvct UART_LOG [first|last]
    local which=${2:-first}
    tr -d '\r' <"$1" | awk -v w="$which" '
        $1 == "CARVE-CNTVCT" && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ {
            v = $2 " " $3; if (w == "first") { print v; exit } }
        END { if (w == "last" && v != "") print v }'
}

# From a guest's console log: the virtual counter at /init (its first
# CARVE-CNTVCT line) in ms, three decimals; "-" if there is none.
carve_init_ms() { # carve_init_ms UART_LOG
    local count hz
    if [[ -s $1 ]] && read -r count hz < <(carve_cntvct "$1"); then
        awk -v c="$count" -v f="$hz" 'BEGIN { printf "%.3f", c * 1000 / f }'
    else
        echo -
    fi
}
