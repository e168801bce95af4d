#!/usr/bin/env bash
# The native HBONE relay under AddressSanitizer + UndefinedBehaviorSanitizer: builds agent/native/test/relay-harness.c
# (linked with agent/native/hbone-relay/*.c) with both sanitizers and runs its scenarios; any sanitizer report fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dist/native-asan
mkdir -p "$out"
gcc -std=gnu11 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -Wall -Wextra -Werror -o "$out/relay-harness" agent/native/test/relay-harness.c agent/native/hbone-relay/*.c -lssl -lcrypto -lnghttp2 -lpthread
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
timeout 150 "$out/relay-harness"
