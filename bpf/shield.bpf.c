// SPDX-License-Identifier: GPL-2.0
/*
 * weir's SYN-flood shield on its own, in front of local services (the
 * seed's use): TCP to a protected port goes through the shield, everything
 * else and whatever the shield lets through goes to the kernel.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"
#include "stats.h"
#include "parse.h"
#include "shield.h"

char LICENSE[] SEC("license") = "GPL";

/* Protected TCP ports (network order) -> policy id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u32);
	__uint(max_entries, 1024);
} shield_ports SEC(".maps");

SEC("xdp")
int weir_shield(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct stat_block *c = counters();
	struct packet pkt = {};
	__u32 *pid;
	int rc;

	rc = parse_eth(data, data_end, &pkt);
	if (rc)
		return pass_because(c, rc);
	if (pkt.l3_proto == bpf_htons(ETH_P_IP))
		rc = parse_ipv4(data, data_end, &pkt);
	else if (pkt.l3_proto == bpf_htons(ETH_P_IPV6))
		rc = parse_ipv6(data, data_end, &pkt);
	else
		rc = WEIR_STAT_PASS_NOT_IP;
	if (rc)
		return pass_because(c, rc);
	if (pkt.key.proto != IPPROTO_TCP)
		return pass_because(c, WEIR_STAT_PASS_NOT_VIP);
	pid = bpf_map_lookup_elem(&shield_ports, &pkt.key.dport);
	if (!pid)
		return pass_because(c, WEIR_STAT_PASS_NOT_VIP);
	rc = shield_tcp(c, ctx, &pkt, *pid);
	if (rc != SHIELD_CONTINUE)
		return rc;
	return verdict(c, XDP_PASS);
}
