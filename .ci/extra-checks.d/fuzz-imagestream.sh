#!/usr/bin/env bash
# A short coverage-guided fuzz run of the qcow2 decoder (rust/imagestream/fuzz). cargo-fuzz
# needs nightly features; the stable toolchain allows them with RUSTC_BOOTSTRAP=1.
# FUZZ_SECONDS (default 45) sets the fuzzing time; seeds are small qcow2 images made by qemu-img
# and small xz and gzip files (the same target reads their trailers).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT/rust/imagestream/fuzz"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$ROOT/target/fuzz"
SECONDS_TO_RUN="${FUZZ_SECONDS:-45}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked -q
fi

# Seeds: real images from qemu-img, in the variants the decoder handles.
corpus="$CARGO_TARGET_DIR/corpus/qcow2_decode"
mkdir -p "$corpus"
if [[ -z "$(ls -A "$corpus")" ]]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    head -c 60000 /dev/urandom > "$work/data"
    head -c 60000 /dev/zero >> "$work/data"
    i=0
    for opts in "-o cluster_size=512" "-o cluster_size=4096" "-c -o cluster_size=4096" \
        "-c -o cluster_size=4096,compression_type=zstd" "-o cluster_size=16384,extended_l2=on" \
        "-o compat=0.10,cluster_size=1024"; do
        # shellcheck disable=SC2086
        qemu-img convert -f raw -O qcow2 $opts "$work/data" "$work/img$i.qcow2"
        # Two steering bytes (chunk size, ranges) precede the image.
        { printf '\x07\x01'; cat "$work/img$i.qcow2"; } > "$corpus/seed$i"
        i=$((i + 1))
    done
fi

# Seeds for the gzip and xz trailer readers.
[[ -e "$corpus/seed-xz" ]] || { printf '\x07\x01'; seq 1 4000 | xz -0; } > "$corpus/seed-xz"
[[ -e "$corpus/seed-gz" ]] || { printf '\x07\x01'; seq 1 4000 | gzip -1; } > "$corpus/seed-gz"

# Address sanitizer when the toolchain has its runtime, plain instrumentation otherwise.
sanitizer=address
if ! cargo fuzz build -s "$sanitizer" qcow2_decode >/dev/null 2>&1; then
    sanitizer=none
    cargo fuzz build -s none qcow2_decode
fi
log="$CARGO_TARGET_DIR/fuzz-qcow2_decode.log"
if ! cargo fuzz run -s "$sanitizer" qcow2_decode "$corpus" -- \
    -max_total_time="$SECONDS_TO_RUN" -max_len=262144 -rss_limit_mb=1024 -print_final_stats=1 \
    >"$log" 2>&1; then
    grep -v '^INFO\|^#' "$log" | head -n 60 >&2
    echo "fuzz-imagestream: crash found; the input is in rust/imagestream/fuzz/artifacts/" >&2
    exit 1
fi
grep '^stat::\|^Done' "$log" || true
echo "fuzz-imagestream: ${SECONDS_TO_RUN}s of fuzzing found no crash"
