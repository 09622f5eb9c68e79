// Package bpfcount is the demo eBPF program of the kernel level: count.c
// counts UDP datagrams per destination port in the map port_packets, from
// tcx ingress (program count_tcx) or XDP (count_xdp). The compiled versions
// are embedded:
//
//	V1      counts every datagram
//	V2      counts, and drops datagrams to port DropPort (counted in dropped)
//	V3      counts, like V1 (a third version label for the tests)
//	Bad     a build the kernel verifier refuses (no packet bounds check)
//	U32     counts into 32-bit values: port_packets has another value size
//	Socket  count_tcx is a socket filter: the wrong program type for tcx
//	XDPOnly has no count_tcx program
//	Renamed counts into packets_by_port: it lacks the map port_packets
//
// csrc/gen.sh builds them from csrc/count.c with clang; the objects are committed, so building and
// testing need no compiler.
package bpfcount

import _ "embed"

//go:generate csrc/gen.sh

// Names in the objects.
const (
	ProgramTCX = "count_tcx"    // the tcx ingress program
	ProgramXDP = "count_xdp"    // the XDP program
	PortMap    = "port_packets" // UDP destination port (uint16) → datagrams (uint64)
	DroppedMap = "dropped"      // key 0 (uint32) → datagrams dropped (uint64)
	DropPort   = 9999           // the port V2 drops
)

var (
	//go:embed count_v1.o
	V1 []byte
	//go:embed count_v2.o
	V2 []byte
	//go:embed count_v3.o
	V3 []byte
	//go:embed count_bad.o
	Bad []byte
	//go:embed count_u32.o
	U32 []byte
	//go:embed count_socket.o
	Socket []byte
	//go:embed count_xdponly.o
	XDPOnly []byte
	//go:embed count_renamed.o
	Renamed []byte
)
