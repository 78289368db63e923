/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Data-path health checks (README "Health checks through the data path").
 * weir's probers run in a private network namespace joined to weir's by a
 * veth pair. A probe leaves the prober namespace addressed to the VIP, from
 * the probers' source address and a source port that names its target
 * (probe_targets); weir_probe, on the outer veth, sends it to that backend
 * exactly as a client's packet goes (DSR: its MAC; tunnel: encapsulated to
 * it) out of the balancer interface. The backend answers from the VIP to
 * the probers' address, which routes back to this node: weir_lb's "not a
 * VIP" branch, while probe_on is set, steers those replies into the veth.
 */
#ifndef WEIR_PROBE_H
#define WEIR_PROBE_H

#include "maps.h"
#include "stats.h"
#include "parse.h"
#include "sched.h"
#include "forward.h"
#include "tunnel.h"

/* Set by the control plane while some VIP has a data-path check: the only
 * cost to other traffic is this test in the "not a VIP" branch. */
__u32 probe_on = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct probe_cfg);
	__uint(max_entries, 1);
} probe_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct probe_target);
	__uint(max_entries, WEIR_PROBE_PORTS);
} probe_targets SEC(".maps");

/*
 * A backend's answer to a prober (TCP to the probers' address and a probe
 * port): into the prober veth, addressed to its inner end. -1: not one.
 */
static __always_inline int probe_reply(struct stat_block *c, void *data, void *data_end, const struct packet *pkt)
{
	struct ethhdr *eth = data;
	struct probe_cfg *cfg;
	__u32 zero = 0, port, action;

	if (pkt->key.proto != IPPROTO_TCP)
		return -1;
	port = bpf_ntohs(pkt->key.dport);
	if (port - WEIR_PROBE_PORT_LO >= WEIR_PROBE_PORTS)
		return -1;
	cfg = bpf_map_lookup_elem(&probe_cfg, &zero);
	if (!cfg || cfg->family != pkt->key.family)
		return -1;
	if (pkt->key.dst[0] != cfg->addr[0] || pkt->key.dst[1] != cfg->addr[1] || pkt->key.dst[2] != cfg->addr[2] ||
	    pkt->key.dst[3] != cfg->addr[3])
		return -1;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, cfg->inner_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->outer_mac, ETH_ALEN);
	action = bpf_redirect_map(&tx_ports, WEIR_PROBE_SLOT_VETH, XDP_DROP);
	if (action != XDP_REDIRECT)
		return drop_because(c, WEIR_STAT_DROP_TX_PORT);
	stat_inc(c, WEIR_STAT_PROBE_REPLY);
	return verdict(c, action);
}

/*
 * On the outer prober veth: a probe to its backend, the way a client's
 * packet to the VIP goes. Anything else from the prober namespace is
 * dropped (drop_probe).
 */
SEC("xdp")
int weir_probe(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct stat_block *c = counters();
	struct packet pkt = {};
	struct probe_target *t;
	struct vip_meta *vip;
	struct backend be;
	__u32 idx;
	int rc;

	rc = parse_eth(data, data_end, &pkt);
	if (rc)
		return drop_because(c, WEIR_STAT_DROP_PROBE);
	if (pkt.l3_proto == bpf_htons(ETH_P_IP))
		rc = parse_ipv4(data, data_end, &pkt);
	else if (pkt.l3_proto == bpf_htons(ETH_P_IPV6))
		rc = parse_ipv6(data, data_end, &pkt);
	else
		rc = WEIR_STAT_PASS_NOT_IP;
	if (rc || pkt.key.proto != IPPROTO_TCP)
		return drop_because(c, WEIR_STAT_DROP_PROBE);
	idx = bpf_ntohs(pkt.key.sport) - WEIR_PROBE_PORT_LO;
	t = bpf_map_lookup_elem(&probe_targets, &idx);
	if (!t || !t->be.family)
		return drop_because(c, WEIR_STAT_DROP_PROBE);
	/* A probe goes to the VIP it was written for, nowhere else. */
	if (t->vip.family != pkt.key.family || t->vip.addr[0] != pkt.key.dst[0] || t->vip.addr[1] != pkt.key.dst[1] ||
	    t->vip.addr[2] != pkt.key.dst[2] || t->vip.addr[3] != pkt.key.dst[3])
		return drop_because(c, WEIR_STAT_DROP_PROBE);
	vip = bpf_map_lookup_elem(&vips, &t->vip);
	if (!vip)
		return drop_because(c, WEIR_STAT_DROP_PROBE);
	be = t->be;
	/* Out of the balancer interface (XDP_TX would send it back to the prober). */
	if (be.tx_port == 0)
		be.tx_port = WEIR_PROBE_SLOT_IFACE;
	stat_inc(c, WEIR_STAT_PROBE_SENT);
	if (vip->mode == WEIR_MODE_TUNNEL)
		return tunnel_encap(c, ctx, &pkt, vip, &be);
	return send_to_backend(c, data, &be);
}

#endif
