#!/usr/bin/env bash
# Builds the libFuzzer target and runs it for $1 seconds (default 600) on a copy of the seed corpus.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_TO_RUN="${1:-600}"
FLAGS=(-c release --product MQTTDecoderFuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library)
swift build "${FLAGS[@]}"
mkdir -p ../fuzz-corpus-work ../fuzz-artifacts
cp -n corpus/* ../fuzz-corpus-work/ 2>/dev/null || true
"$(swift build "${FLAGS[@]}" --show-bin-path)/MQTTDecoderFuzzer" ../fuzz-corpus-work corpus \
    -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -artifact_prefix=../fuzz-artifacts/ -print_final_stats=1
