// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// count counts UDP datagrams per destination port in the map port_packets,
// from tcx ingress (count_tcx) or XDP (count_xdp). Built with DROP_PORT set,
// it also drops datagrams to that port and counts them in dropped. gen.sh
// builds the versions the tests, the benchmark and the demo use.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// tcx verdicts (linux/bpf.h from 6.6 on; older headers lack them).
#define HS_TCX_NEXT (-1)
#define HS_TCX_DROP 2

#ifndef DROP_PORT
#define DROP_PORT 0
#endif
#ifndef COUNT_T
#define COUNT_T __u64
#endif
#ifndef PORT_MAP
#define PORT_MAP port_packets
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16); // UDP destination port, host byte order
	__type(value, COUNT_T);
} PORT_MAP SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

// version is this build's label, readable from user space in .rodata.
volatile const __u32 version = VERSION;

// count returns 1 when the datagram must be dropped.
static __always_inline int count(void *data, void *data_end)
{
	struct ethhdr *eth = data;
#ifdef BAD
	// No bounds check: the verifier refuses this build.
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
#else
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
#endif
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return 0;
	struct udphdr *udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return 0;
	__u16 port = bpf_ntohs(udp->dest);
	if (DROP_PORT != 0 && port == DROP_PORT) {
		__u32 zero = 0;
		__u64 *d = bpf_map_lookup_elem(&dropped, &zero);
		if (d)
			__sync_fetch_and_add(d, 1);
		return 1;
	}
	COUNT_T *n = bpf_map_lookup_elem(&PORT_MAP, &port);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	COUNT_T one = 1;
	if (bpf_map_update_elem(&PORT_MAP, &port, &one, BPF_NOEXIST) != 0) {
		// Another CPU inserted the port first.
		n = bpf_map_lookup_elem(&PORT_MAP, &port);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	return 0;
}

#if defined(XDP_ONLY)
// No tcx program in this build.
#elif defined(WRONG_TYPE)
// A socket filter under the tcx program's name: the wrong program type.
SEC("socket")
int count_tcx(struct __sk_buff *skb)
{
	return 0;
}
#else
SEC("tcx/ingress")
int count_tcx(struct __sk_buff *skb)
{
	if (count((void *)(long)skb->data, (void *)(long)skb->data_end))
		return HS_TCX_DROP;
	return HS_TCX_NEXT;
}
#endif

SEC("xdp")
int count_xdp(struct xdp_md *ctx)
{
	if (count((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		return XDP_DROP;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
