//! The SYN-flood shield's control plane: policies from the config, the
//! maps both programs share (the load balancer's combined entry and the
//! standalone `weir shield`), and the standalone data plane.

use std::mem::MaybeUninit;
use std::net::IpAddr;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

use crate::config::{parse_prefix, AttackMode, Shield, VipShield};
use crate::mapio::{addr_words, read_counters};
use crate::skel::shield::{ShieldSkel, ShieldSkelBuilder};
use crate::skel::{bytes_of, from_bytes, weir_attack_mode, weir_shield_flags, LpmV4, LpmV6, ShieldPolicy, ShieldState};

const NS: u64 = 1_000_000_000;

/// Load-time settings of the shield (constants and map sizes).
#[derive(Debug, Clone, Default)]
pub struct ShieldLoad {
    pub has_deny: bool,
    pub has_allow: bool,
    pub guard_interval_ns: u64,
    pub guard_burst_ns: u64,
    pub sources: u32,
    pub challenges: u32,
}

impl ShieldLoad {
    pub fn from_config(s: &Shield) -> ShieldLoad {
        // The guard is one GCRA per CPU (bpf/shield.h flow_guard): each CPU
        // admits max_new_flows / N per second, with one second's burst.
        let cpus = libbpf_rs::num_possible_cpus().unwrap_or(1).max(1) as u64;
        let (gi, gb) = if s.max_new_flows > 0 { ((NS * cpus) / u64::from(s.max_new_flows), NS) } else { (0, 0) };
        ShieldLoad {
            has_deny: !s.deny.is_empty(),
            has_allow: !s.allow.is_empty(),
            guard_interval_ns: gi,
            guard_burst_ns: gb,
            sources: s.sources,
            challenges: s.challenges,
        }
    }
}

/// A service's policy: the [shield] section with a VIP's overrides applied.
pub fn policy(s: &Shield, o: Option<&VipShield>) -> ShieldPolicy {
    let rate = o.and_then(|o| o.rate).unwrap_or(s.rate).max(1);
    let burst = o.and_then(|o| o.burst).unwrap_or(s.burst).max(1);
    let attack = o.and_then(|o| o.attack).unwrap_or(s.attack);
    let interval = NS / u64::from(rate);
    let mut flags = 0u8;
    if s.dry_run {
        flags |= weir_shield_flags::WEIR_SHIELD_DRY_RUN.0 as u8;
    }
    if s.aggregate {
        flags |= weir_shield_flags::WEIR_SHIELD_AGGREGATE.0 as u8;
    }
    ShieldPolicy {
        interval_ns: interval,
        burst_ns: interval * u64::from(burst),
        verified_ttl_ns: u64::from(s.verified_ttl) * NS,
        attack_on: s.attack_on,
        attack_off: s.attack_off,
        attack_mode: match attack {
            AttackMode::Auto => weir_attack_mode::WEIR_ATTACK_AUTO.0,
            AttackMode::On => weir_attack_mode::WEIR_ATTACK_ON.0,
            AttackMode::Off => weir_attack_mode::WEIR_ATTACK_OFF.0,
        } as u8,
        flags,
        pad: 0,
        enabled: u32::from(o.and_then(|o| o.enabled).unwrap_or(true)),
    }
}

/// The shield's maps, whichever program holds them.
pub struct ShieldMaps<'a> {
    pub pol: &'a dyn MapCore,
    pub state: &'a dyn MapCore,
    pub deny_v4: &'a dyn MapCore,
    pub deny_v6: &'a dyn MapCore,
    pub allow_v4: &'a dyn MapCore,
    pub allow_v6: &'a dyn MapCore,
}

/// The LPM key of a prefix: (IPv4?, key bytes).
pub fn prefix_key(p: &str) -> Result<(bool, Vec<u8>)> {
    let (ip, len) = parse_prefix(p).with_context(|| format!("'{p}' is not a prefix"))?;
    let (addr, _) = addr_words(ip);
    Ok(match ip {
        IpAddr::V4(_) => (true, bytes_of(&LpmV4 { prefixlen: u32::from(len), addr: addr[0] }).to_vec()),
        IpAddr::V6(_) => (false, bytes_of(&LpmV6 { prefixlen: u32::from(len), addr }).to_vec()),
    })
}

fn add_prefix(v4: &dyn MapCore, v6: &dyn MapCore, p: &str) -> Result<()> {
    let (ip, len) = parse_prefix(p).with_context(|| format!("'{p}' is not a prefix"))?;
    let (addr, _) = addr_words(ip);
    let one = 1u32.to_ne_bytes();
    match ip {
        IpAddr::V4(_) => {
            let k = LpmV4 { prefixlen: u32::from(len), addr: addr[0] };
            v4.update(bytes_of(&k), &one, MapFlags::ANY)
        }
        IpAddr::V6(_) => {
            let k = LpmV6 { prefixlen: u32::from(len), addr };
            v6.update(bytes_of(&k), &one, MapFlags::ANY)
        }
    }
    .with_context(|| format!("adding prefix {p}"))
}

impl ShieldMaps<'_> {
    /// Apply over a running config: new prefixes are added before the ones
    /// no longer listed are removed, so a denied source never slips through.
    pub fn replace(&self, s: &Shield, policies: &[(u32, ShieldPolicy)]) -> Result<()> {
        let before: Vec<(&dyn MapCore, Vec<Vec<u8>>)> =
            [self.deny_v4, self.deny_v6, self.allow_v4, self.allow_v6].into_iter().map(|m| (m, m.keys().collect())).collect();
        self.apply(s, policies)?;
        let mut keep: Vec<std::collections::HashSet<Vec<u8>>> = vec![Default::default(); 4];
        for (i, list) in [(0usize, &s.deny), (2, &s.allow)] {
            for p in list.iter() {
                let (v4, k) = prefix_key(p)?;
                keep[if v4 { i } else { i + 1 }].insert(k);
            }
        }
        for (i, (map, keys)) in before.into_iter().enumerate() {
            for k in keys.into_iter().filter(|k| !keep[i].contains(k)) {
                let _ = map.delete(&k);
            }
        }
        Ok(())
    }

    pub fn apply(&self, s: &Shield, policies: &[(u32, ShieldPolicy)]) -> Result<()> {
        for p in &s.deny {
            add_prefix(self.deny_v4, self.deny_v6, p)?;
        }
        for p in &s.allow {
            add_prefix(self.allow_v4, self.allow_v6, p)?;
        }
        for (id, pol) in policies {
            self.pol.update(&id.to_ne_bytes(), bytes_of(pol), MapFlags::ANY).context("writing a shield policy")?;
        }
        Ok(())
    }

    pub fn state(&self, id: u32) -> Result<ShieldState> {
        let v = self.state.lookup(&id.to_ne_bytes(), MapFlags::ANY)?.unwrap_or_default();
        if v.is_empty() {
            return Ok(ShieldState::default());
        }
        from_bytes(&v)
    }
}

/// `weir shield`: the shield alone in front of local TCP ports.
pub struct Standalone {
    pub skel: ShieldSkel<'static>,
}

impl Standalone {
    pub fn load(s: &Shield) -> Result<Standalone> {
        anyhow::ensure!(
            !s.ports.is_empty(),
            "shield.ports: list the local TCP ports to protect, e.g. ports = [80, 443]"
        );
        let l = ShieldLoad::from_config(s);
        let holder: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = ShieldSkelBuilder::default().open(holder).context("opening the shield BPF object")?;
        open.maps.syn_bucket.set_max_entries(l.sources)?;
        open.maps.syn_verified.set_max_entries(l.sources)?;
        open.maps.syn_challenge.set_max_entries(l.challenges)?;
        let ro = open.maps.rodata_data.as_deref_mut().context("the shield object has no .rodata")?;
        ro.shield_on = 1;
        ro.has_deny = u32::from(l.has_deny);
        ro.has_allow = u32::from(l.has_allow);
        let skel = open
            .load()
            .map_err(|e| anyhow::anyhow!("loading the shield BPF program failed: {e} (run as root)"))?;
        let me = Standalone { skel };
        me.maps().apply(s, &[(0, policy(s, None))])?;
        for port in &s.ports {
            me.skel
                .maps
                .shield_ports
                .update(&port.to_be().to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)
                .context("writing a protected port")?;
        }
        Ok(me)
    }

    pub fn maps(&self) -> ShieldMaps<'_> {
        let m = &self.skel.maps;
        ShieldMaps {
            pol: &m.shield_pol,
            state: &m.shield_state,
            deny_v4: &m.deny_v4,
            deny_v6: &m.deny_v6,
            allow_v4: &m.allow_v4,
            allow_v6: &m.allow_v6,
        }
    }

    pub fn counters(&self) -> Result<Vec<u64>> {
        read_counters(&self.skel.maps.stats)
    }
}
