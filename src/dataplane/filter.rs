//! The address filter (bpf/maps.h addr_filter): one bit per hash of a
//! destination address the program may have business with — every VIP
//! address, every NAT / tunnel source address, the probers' source. A
//! packet whose bit is clear goes to the kernel after one array load.
//!
//! The bit of an address is set before anything that uses the address is
//! written (`filter_add`, `filter_add_source`), and only VIP addresses'
//! bits are ever cleared, by `filter_sync` after the writes, from what is
//! live: the filter never says "not ours" for an address that is. A source
//! address's bit stays while the instance lives (a NAT flow's replies come
//! to its old source after a reload changed it).

use std::net::IpAddr;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use super::{addr_words, key32, Dataplane};
use crate::skel::{from_bytes, weir_const, ProbeCfg};

/// Words of each half: any address of ours, then DSR VIP addresses.
pub const FILTER_WORDS: usize = weir_const::WEIR_ADDR_FILTER_WORDS.0 as usize;

/// The filter bit of an address in the map's words (bpf/sched.h
/// addr_filter_bit: IPv4 words 1..3 are zero).
pub fn filter_bit_of_words(w: &[u32; 4]) -> u32 {
    (w[0] ^ w[1] ^ w[2] ^ w[3]).wrapping_mul(0x9E37_79B1) >> 16
}

pub fn filter_bit(a: IpAddr) -> u32 {
    filter_bit_of_words(&addr_words(a).0)
}

fn set(words: &mut [u64], bit: u32) {
    words[(bit >> 6) as usize] |= 1u64 << (bit & 63);
}

/// An address in the first half, and (a DSR VIP's) in the second.
fn set_addr(words: &mut [u64], a: &[u32; 4], dsr: bool) {
    let bit = filter_bit_of_words(a);
    set(&mut words[..FILTER_WORDS], bit);
    if dsr {
        set(&mut words[FILTER_WORDS..], bit);
    }
}

/// What this instance wrote, and the first-half bits it never clears.
pub(crate) struct FilterState {
    words: Vec<u64>,
    /// NAT and tunnel source addresses and the probers' (a NAT flow's
    /// replies come to its source address for as long as the flow lives,
    /// whatever the config says now), and whatever the map held when this
    /// instance took it over from a running one.
    sticky: Vec<u64>,
}

impl Dataplane {
    /// The filter's state, read from the map the first time (a map taken
    /// over from a running instance keeps its bits: they are sticky).
    fn filter_state(&self) -> Result<std::cell::RefMut<'_, Option<FilterState>>> {
        let mut st = self.filter.borrow_mut();
        if st.is_none() {
            let mut words = vec![0u64; 2 * FILTER_WORDS];
            for (i, w) in words.iter_mut().enumerate() {
                if let Some(v) = self.skel.maps.addr_filter.lookup(&key32(i as u32), MapFlags::ANY).context("reading the address filter")? {
                    *w = u64::from_ne_bytes(v.as_slice().try_into().context("an address filter word is not 8 bytes")?);
                }
            }
            let sticky = words[..FILTER_WORDS].to_vec();
            *st = Some(FilterState { words, sticky });
        }
        Ok(st)
    }

    /// Write the words of `want` that differ from what was written last.
    fn filter_write(&self, st: &mut FilterState, want: Vec<u64>) -> Result<()> {
        for (i, w) in want.iter().enumerate() {
            if st.words[i] == *w {
                continue;
            }
            self.skel.maps.addr_filter.update(&key32(i as u32), &w.to_ne_bytes(), MapFlags::ANY).context("writing the address filter")?;
        }
        st.words = want;
        Ok(())
    }

    /// Set a VIP address's bit (and, `dsr`, its bit in the DSR half) before
    /// the VIP is written: never clears one.
    pub(crate) fn filter_add(&self, addrs: &[[u32; 4]], dsr: bool) -> Result<()> {
        let mut guard = self.filter_state()?;
        let st = guard.as_mut().context("the address filter state")?;
        let mut want = st.words.clone();
        for a in addrs {
            set_addr(&mut want, a, dsr);
        }
        self.filter_write(st, want)
    }

    /// Set a source address's bit (NAT / tunnel source, the probers'),
    /// before it is used; it is never cleared (see FilterState::sticky).
    pub(crate) fn filter_add_source(&self, a: [u32; 4]) -> Result<()> {
        if a == [0; 4] {
            return Ok(());
        }
        let mut guard = self.filter_state()?;
        let st = guard.as_mut().context("the address filter state")?;
        set_addr(&mut st.sticky, &a, false);
        let mut want = st.words.clone();
        set_addr(&mut want, &a, false);
        self.filter_write(st, want)
    }

    /// The filter of what is live now (VIP addresses) and the sticky bits:
    /// clears the bits of VIP addresses gone.
    pub(crate) fn filter_sync(&self) -> Result<()> {
        let mut guard = self.filter_state()?;
        let st = guard.as_mut().context("the address filter state")?;
        let mut want = vec![0u64; 2 * FILTER_WORDS];
        want[..FILTER_WORDS].copy_from_slice(&st.sticky);
        let dsr = crate::skel::weir_fwd_mode::WEIR_MODE_DSR.0 as u8;
        for (key, meta) in self.live.borrow().values() {
            set_addr(&mut want, &key.addr, meta.mode == dsr);
            if meta.source != [0; 4] {
                set_addr(&mut want, &meta.source, false);
                set_addr(&mut st.sticky, &meta.source, false);
            }
        }
        if let Some(v) = self.skel.maps.probe_cfg.lookup(&key32(0), MapFlags::ANY).context("reading probe_cfg")? {
            let cfg: ProbeCfg = from_bytes(&v)?;
            if cfg.family != 0 {
                set_addr(&mut want, &cfg.addr, false);
            }
        }
        self.filter_write(st, want)
    }

    /// Is `a`'s bit set in the map's first half (tests)?
    pub fn filter_says_maybe(&self, a: IpAddr) -> Result<bool> {
        self.filter_bit_set(a, 0)
    }

    /// Is `a`'s bit set in the second half: an address with a DSR VIP?
    pub fn filter_says_dsr(&self, a: IpAddr) -> Result<bool> {
        self.filter_bit_set(a, 1)
    }

    fn filter_bit_set(&self, a: IpAddr, half: u32) -> Result<bool> {
        let bit = filter_bit(a);
        let w = (bit >> 6) + half * FILTER_WORDS as u32;
        let v = self.skel.maps.addr_filter.lookup(&key32(w), MapFlags::ANY)?.context("the address filter has no such word")?;
        let w = u64::from_ne_bytes(v.as_slice().try_into().context("an address filter word is not 8 bytes")?);
        Ok(w >> (bit & 63) & 1 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_bits_use_the_packet_words() {
        // 198.18.0.100 as the packet holds it (network order in memory).
        let w = u32::from_ne_bytes([198, 18, 0, 100]);
        assert_eq!(filter_bit("198.18.0.100".parse().unwrap()), w.wrapping_mul(0x9E37_79B1) >> 16);
        assert!(filter_bit("2001:db8::1".parse().unwrap()) < 65536);
        assert_ne!(filter_bit("198.18.0.100".parse().unwrap()), filter_bit("198.18.0.101".parse().unwrap()));
    }
}
