#!/bin/sh
# Builds the versions of count.c that the tests, bench/bpfswap and the demo
# load. Needs clang and libbpf-dev (bpf/bpf_helpers.h); .ci/run installs
# them. The objects are committed, so go build and go test need neither;
# -ffile-prefix-map keeps the checkout's path out of their BTF, so any clone
# rebuilds them byte for byte.
set -eu
cd "$(dirname "$0")/.."
build() { out=$1; shift; clang -O2 -g -ffile-prefix-map="$PWD"=. -Wall -Werror -target bpf -I/usr/include/$(uname -m)-linux-gnu -c csrc/count.c -o "$out" "$@"; llvm-strip -g "$out"; }
build count_v1.o -DVERSION=1
build count_v2.o -DVERSION=2 -DDROP_PORT=9999
build count_v3.o -DVERSION=3
build count_bad.o -DVERSION=4 -DBAD
build count_u32.o -DVERSION=5 -DCOUNT_T=__u32
build count_socket.o -DVERSION=6 -DWRONG_TYPE
build count_xdponly.o -DVERSION=7 -DXDP_ONLY
build count_renamed.o -DVERSION=8 -DPORT_MAP=packets_by_port
