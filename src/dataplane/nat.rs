//! Full NAT's state: the switch that makes non-VIP packets look for a NAT
//! flow, and the in-kernel sweep of expired flows.

use super::*;

impl Dataplane {
    /// Non-VIP packets look for a NAT flow only while some VIP uses NAT.
    pub(crate) fn set_nat_on(&self, plan: &Plan) -> Result<()> {
        let on = plan.vips.iter().any(|v| v.mode == crate::config::Mode::Nat);
        self.set_bss_u32(std::mem::offset_of!(crate::skel::lb::types::bss, nat_on), u32::from(on))
            .context("switching NAT reply handling")
    }

    /// Free the NAT flows that expired more than `margin_s` seconds ago.
    /// The walk runs in the kernel (the `weir_nat_sweep` program, through
    /// BPF_PROG_TEST_RUN) so that each free is a compare-and-swap on the
    /// entry's clock, like a claim: a port another CPU claims or refreshes
    /// meanwhile is never freed. Forward entries are left to their LRU.
    /// Returns how many flows were freed.
    pub fn sweep_nat(&self, margin_s: u32) -> Result<usize> {
        // struct nat_sweep_io: margin, seen, freed, pad; 14 bytes at least
        // (test_run wants an Ethernet header's worth).
        let mut io = [0u8; 16];
        io[0..4].copy_from_slice(&margin_s.to_ne_bytes());
        let (action, out, _) = test_run(&self.skel.progs.weir_nat_sweep, &io, 1).context("running the NAT sweep")?;
        if action != 2 {
            bail!("the NAT sweep returned XDP action {action}, expected 2 (its frame was refused)");
        }
        let freed = out.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes).unwrap_or(0);
        Ok(freed as usize)
    }
}
