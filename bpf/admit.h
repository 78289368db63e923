/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A packet without a usable tracked flow asks for a backend: the shield's
 * out-of-state check, scheduling, and the shield's new-flow guard. The same
 * for every mode (lb.bpf.c for DSR and tunnel, nat.h for NAT).
 */
#ifndef WEIR_ADMIT_H
#define WEIR_ADMIT_H

#include "maps.h"
#include "stats.h"
#include "sched.h"
#include "shield.h"

/* The new flow's backend (its id in *bid), or NULL with the verdict in *action. */
static __always_inline struct backend *admit_new_flow(struct stat_block *c, const struct packet *pkt,
						      const struct vip_meta *vip, int tracked, __u64 bytes,
						      __u32 *bid, int *action)
{
	struct backend *be;

	if (!tracked && shield_on && pkt->key.proto == IPPROTO_TCP && !(pkt->tcp_flags & TCP_SYN)) {
		/* ACK / RST / FIN floods: in attack mode no tracked flow, no new state. */
		int dry = 0;

		if (shield_untracked(vip->vip_id, &dry)) {
			if (!dry) {
				*action = drop_because(c, WEIR_STAT_SHIELD_OUT_OF_STATE);
				return NULL;
			}
			stat_inc(c, WEIR_STAT_SHIELD_OUT_OF_STATE);
			stat_inc(c, WEIR_STAT_SHIELD_DRY_RUN);
		}
	}
	*bid = schedule(vip, &pkt->key);
	be = bpf_map_lookup_elem(&backends, bid);
	if (!be || !(be->flags & WEIR_BACKEND_ACTIVE)) {
		traffic_add(&vip_stats, vip->vip_id, bytes, 0);
		*action = drop_because(c, WEIR_STAT_DROP_NO_BACKEND);
		return NULL;
	}
	if (shield_on && !flow_guard_take()) {
		*action = drop_because(c, WEIR_STAT_SHIELD_FLOW_GUARD);
		return NULL;
	}
	return be;
}

#endif
