//! `weir run`: one running instance of the load balancer, owned by the core
//! thread (see mod.rs), with a method per thing it does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::neigh::Watched;
use super::{Msg, Outcome, Service};
use crate::attach::{attach, AttachMode, XdpLink};
use crate::config::{Config, OnDown};
use crate::control::ControlSocket;
use crate::dataplane::{resolve_hops, Dataplane, HopPlan, NextHop, Settings};
use crate::dataplane::ProbeSlot;
use crate::health::{Checker, Datapath, Health, Target};
use crate::probenet::ProbeNet;
use crate::skel::{VipKey, PROBE_PORTS, PROBE_PORT_LO};
use crate::metrics::MetricsServer;
use crate::net::{Iface, Resolver};
use crate::plan::Plan;
use crate::stats::{Fingerprints, Snapshot, FLOW_COUNT_CAP};
use crate::tier::fingerprint;

/// How long a start or a reload waits for the neighbour table to answer
/// the probes of all new backends at once, before the unresolved ones start
/// down (a reload holds the core thread that long at most).
const SETTLE: Duration = Duration::from_millis(100);

/// `weir run`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    pub iface: String,
    pub config: String,
    pub mode: AttachMode,
    pub interval: u64,
    pub allow_host_netns: bool,
    pub metrics: Option<String>,
}

pub struct Instance {
    dp: Dataplane,
    plan: Plan,
    iface: Iface,
    config: String,
    link: XdpLink,
    mode: String,
    started: Instant,
    health: BTreeMap<u32, Health>,
    /// Probers of health-check generation `health_gen`.
    probers: Option<Checker>,
    /// The prober namespace, while some check goes through the data path.
    probenet: Option<ProbeNet>,
    health_gen: u64,
    hops: HopPlan,
    watched: Watched,
    tracing: bool,
    flows: Arc<AtomicUsize>,
    core: Sender<Msg>,
    last_sweep: Instant,
    last_frag_sweep: Instant,
    last_addr_check: Instant,
    /// tier.announce: the device whose addresses the BGP daemon announces.
    announcer: Option<crate::tier::announce::Announcer>,
    /// The interface's MAC changed since the program was loaded with it.
    mac_stale: bool,
    drain: Option<Drain>,
    /// tier.peers: the flow sync with the other nodes.
    sync: Option<crate::tier::sync::Sync>,
    /// The fingerprints, as of `Dataplane::table_writes` = .0.
    fingerprints: Option<(u64, Fingerprints)>,
    /// What the live fingerprint read of each VIP's table.
    live_cache: fingerprint::PlanCache,
}

/// A drain in progress (`weir drain`).
struct Drain {
    started: Instant,
    timeout: Duration,
    quiet: Duration,
    /// Frames forwarded (XDP_TX + XDP_REDIRECT) at the last tick, and when that last changed.
    forwarded: u64,
    last_change: Instant,
    done: bool,
}

/// Whether a backend's check goes through the data path (DSR and tunnel
/// VIPs; a NAT VIP's backends are probed directly, as before).
fn is_datapath(v: &crate::plan::PlannedVip, check: &crate::config::Check) -> bool {
    check.via == crate::config::CheckVia::Datapath && v.mode != crate::config::Mode::Nat
}

fn checked_ids(p: &Plan) -> BTreeSet<u32> {
    p.vips.iter().flat_map(|v| v.backends.iter().filter(|b| b.check.is_some()).map(|b| b.id)).collect()
}

/// The probers to run, and for data-path checks (given the prober
/// namespace) the source port of each: PROBE_PORT_LO on, in plan order.
fn health_targets(p: &Plan, net: Option<&ProbeNet>) -> Result<(Vec<Target>, Vec<ProbeSlot>)> {
    let mut targets = Vec::new();
    let mut slots = Vec::new();
    for v in &p.vips {
        for b in &v.backends {
            let Some(check) = b.check.clone() else { continue };
            let datapath = match net {
                Some(n) if is_datapath(v, &check) => {
                    let i = u16::try_from(slots.len()).ok().filter(|i| *i < PROBE_PORTS).with_context(|| {
                        format!("more than {PROBE_PORTS} data-path health checks (one source port each)")
                    })?;
                    let port = PROBE_PORT_LO + i;
                    let (addr, family) = crate::mapio::addr_words(v.addr);
                    let vip = VipKey { addr, port: v.port.to_be(), proto: v.proto.number(), family };
                    slots.push(ProbeSlot { port, vip, backend_id: b.id });
                    Some(Datapath { netns: n.netns.clone(), from: std::net::SocketAddr::new(n.source, port), vip: v.addr })
                }
                _ => None,
            };
            targets.push(Target { vip_id: v.id, backend_id: b.id, addr: b.addr, check, datapath });
        }
    }
    Ok((targets, slots))
}

/// The data-path probes' source address: health.datapath_source, or the
/// interface's first IPv4 address. None: no data-path check configured.
fn probe_source(p: &Plan, iface: &Iface) -> Result<Option<std::net::Ipv4Addr>> {
    let wanted = p.vips.iter().any(|v| v.backends.iter().any(|b| b.check.as_ref().is_some_and(|c| is_datapath(v, c))));
    if !wanted {
        return Ok(None);
    }
    let ip = p.probe_source.or_else(|| iface.addrs.iter().copied().find(IpAddr::is_ipv4));
    match ip {
        Some(IpAddr::V4(a)) => Ok(Some(a)),
        _ => bail!(
            "health.via = \"datapath\": {} has no IPv4 address to send probes from; set health.datapath_source \
             to an address of this node that the backends route back to it",
            iface.name
        ),
    }
}

/// Resolve a plan's next hops without waiting: MACs the kernel has now, or
/// else the ones this instance already follows (`known`); the rest start
/// unresolved.
fn hops_now(plan: &Plan, iface: &Iface, known: &HopPlan) -> Result<HopPlan> {
    let mut known_macs: BTreeMap<(IpAddr, u32), [u8; 6]> = BTreeMap::new();
    for (id, f) in &known.followed {
        if let Some(h) = known.hops.get(id) {
            known_macs.insert((f.neighbour, f.ifindex), h.mac);
        }
    }
    let mut r = Resolver::new()?;
    resolve_hops(plan, iface, &mut |ip, via, mode| {
        let (nb, mac) = r.lookup(ip, via, mode)?;
        Ok((nb, mac.or_else(|| known_macs.get(&(nb, via.ifindex)).copied())))
    })
}

/// `hops_now`, then up to SETTLE for the probes to be answered.
fn settled_hops(plan: &Plan, iface: &Iface, known: &HopPlan) -> Result<HopPlan> {
    let mut hops = hops_now(plan, iface, known)?;
    let t = Instant::now();
    while !hops.unresolved().is_empty() && t.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(10));
        hops = hops_now(plan, iface, &hops)?;
    }
    Ok(hops)
}

impl Instance {
    /// Backends out of the tables: failing their checks, or unresolved.
    fn down(&self) -> BTreeSet<u32> {
        let mut d: BTreeSet<u32> = self.health.iter().filter(|(_, h)| !h.up).map(|(id, _)| *id).collect();
        d.extend(self.hops.unresolved());
        d
    }

    /// Tell the announcer which VIP addresses are usable now.
    fn announce(&self) {
        if let Some(a) = &self.announcer {
            a.want(self.usable());
        }
    }

    /// Start, stop or move the announce device to match the plan; then tell
    /// it what is usable now (a reload may have added or removed VIPs).
    fn start_announcer(&mut self, inherited: Option<OwnedFd>) -> Result<()> {
        let want = self.plan.tier.announce.then(|| self.plan.tier.device_for(&self.iface.name));
        if self.announcer.as_ref().map(|a| a.device.clone()) != want {
            self.announcer = None; // withdraws what the old device announced
            if let Some(dev) = want {
                let prog = crate::tier::announce::attached_prog(self.iface.ifindex);
                let a = crate::tier::announce::Announcer::start(
                    &dev,
                    self.iface.ifindex,
                    inherited,
                    self.usable(),
                    prog,
                    self.drain.is_some(),
                )?;
                tracing::info!("announcing usable VIP addresses on {dev} for the BGP daemon");
                self.announcer = Some(a);
            }
        }
        self.announce();
        Ok(())
    }

    /// The VIP addresses to announce: those with a usable backend, none if
    /// the interface's MAC is no longer the one the program checks frames
    /// against (it would pass every frame: restart weir).
    fn usable(&self) -> BTreeSet<IpAddr> {
        if self.mac_stale {
            return BTreeSet::new();
        }
        let mut not_usable = self.down();
        // A checked backend counts only once a check has passed: a node
        // that starts (or a backend a reload adds) attracts no traffic to
        // backends nobody has seen alive.
        not_usable.extend(self.health.iter().filter(|(_, h)| !h.proven).map(|(id, _)| *id));
        crate::tier::usable_addrs(&self.plan, &not_usable)
    }

    /// Start, stop or re-index the flow sync to match the plan.
    fn start_sync(&mut self) -> Result<()> {
        let same = self.sync.as_ref().is_some_and(|y| y.configured == (self.plan.tier.peers.clone(), self.plan.tier.sync_port));
        if same {
            if let Some(y) = &self.sync {
                y.set_plan(&self.plan);
            }
            return Ok(());
        }
        self.sync = None;
        self.dp.set_sync_on(false)?;
        if self.plan.tier.peers.is_empty() {
            return Ok(());
        }
        let maps = &self.dp.skel.maps;
        let handle = |m: &libbpf_rs::Map| libbpf_rs::MapHandle::try_from(m).context("sharing a map with the sync threads");
        let y = crate::tier::sync::Sync::start(&self.plan, handle(&maps.flow_sync)?, crate::dataplane::FlowTables::established(&self.dp)?, handle(&maps.backends)?)?;
        self.dp.set_sync_on(y.is_some())?;
        self.sync = y;
        Ok(())
    }

    fn tier_status(&self) -> Option<crate::stats::TierStatus> {
        if self.announcer.is_none() && self.sync.is_none() {
            return None;
        }
        Some(crate::stats::TierStatus {
            announce_device: self.announcer.as_ref().map(|a| a.device.clone()),
            announced: self.announcer.as_ref().map(|a| a.announced().iter().map(|ip| ip.to_string()).collect()).unwrap_or_default(),
            draining: self.drain.is_some(),
            sync: self.sync.as_ref().map(|y| y.stats()),
        })
    }

    fn forwarded(&self) -> u64 {
        use crate::skel::weir_stat;
        self.dp
            .global_counters()
            .map(|c| c[weir_stat::WEIR_STAT_XDP_TX.0 as usize] + c[weir_stat::WEIR_STAT_XDP_REDIRECT.0 as usize])
            .unwrap_or(0)
    }

    fn health_down(&self) -> BTreeSet<u32> {
        self.health.iter().filter(|(_, h)| !h.up).map(|(id, _)| *id).collect()
    }

    /// The prober namespace for `plan`: kept, made (the first data-path
    /// check, or a new source address) or dropped (none left).
    fn probenet_for(&mut self, plan: &Plan) -> Result<()> {
        let src = probe_source(plan, &self.iface)?;
        if self.probenet.as_ref().map(|n| n.source) == src.map(IpAddr::V4) {
            return Ok(());
        }
        // The probers of the old namespace stop first (their probes would
        // fail from now on); the caller starts them anew (start_probers),
        // or restore_probers after a failure.
        self.probers = None;
        self.dp.set_probe_on(false)?;
        self.probenet = None;
        if let Some(a) = src {
            let n = ProbeNet::create(&self.dp, &self.iface, a)?;
            tracing::info!("data-path health checks from {a}, ports {PROBE_PORT_LO}-{} (prober veth {})", PROBE_PORT_LO + PROBE_PORTS - 1, n.outer);
            self.probenet = Some(n);
        }
        Ok(())
    }

    /// After a failed reload or address change: the prober namespace and
    /// probers of the running plan again (a failure here is logged: the
    /// data-path checks fail, and say why).
    fn restore_probers(&mut self) {
        let plan = self.plan.clone();
        if let Err(e) = self.probenet_for(&plan).and_then(|()| self.start_probers()) {
            tracing::error!("restarting the health checks: {e:#}");
        }
    }

    fn start_probers(&mut self) -> Result<()> {
        // The old probers stop (joined) before the ports are given out anew.
        self.probers = None;
        let (targets, slots) = health_targets(&self.plan, self.probenet.as_ref())?;
        self.dp.set_probe_targets(&slots)?;
        self.dp.set_probe_on(!slots.is_empty())?;
        let keep: BTreeMap<u32, Health> =
            targets.iter().map(|t| (t.backend_id, self.health.get(&t.backend_id).copied().unwrap_or_default())).collect();
        self.health = keep;
        // The old probers stop (joined) before the new ones start; their
        // late events carry the old generation and are ignored.
        self.probers = None;
        self.health_gen += 1;
        let (checker, rx) = Checker::start(targets);
        let (gen, core) = (self.health_gen, self.core.clone());
        let _ = std::thread::Builder::new().name("weir-health".into()).spawn(move || {
            for ev in rx {
                if core.send(Msg::Health(gen, ev)).is_err() {
                    return;
                }
            }
        });
        self.probers = Some(checker);
        Ok(())
    }

    fn update_watched(&self) {
        let set: BTreeSet<(IpAddr, u32)> = self.hops.followed.values().map(|f| (f.neighbour, f.ifindex)).collect();
        if let Ok(mut w) = self.watched.lock() {
            *w = set;
        }
    }

    fn log_unresolved(&self) {
        for vip in &self.plan.vips {
            for b in vip.backends.iter().filter(|b| self.hops.unresolved().contains(&b.id)) {
                tracing::warn!(
                    "backend {} of {} is down (unresolved): no MAC for it yet; probing, it joins when it answers",
                    b.addr,
                    crate::config::esc(&vip.name)
                );
            }
        }
    }

    /// Rebuild one VIP's tables from the current down set.
    fn rewrite_vip(&self, vip_id: u32) -> Result<()> {
        let vip = self.plan.vips.iter().find(|v| v.id == vip_id).context("unknown VIP")?;
        let down = self.down();
        let (ring, rr, _) = crate::plan::tables(&vip.backends, self.plan.table_size, &down);
        self.dp.write_tables(vip.id, &ring, &rr)
    }

    /// A probe result: update the backend's state; on a change, rebuild its
    /// VIP's tables without the backends that are down (the spare half, then
    /// a flip) and apply the VIP's policy for tracked flows.
    fn on_health(&mut self, ev: crate::health::Event) -> Result<()> {
        let vip = self.plan.vips.iter().find(|v| v.id == ev.vip_id).context("unknown VIP")?;
        let b = vip.backends.iter().find(|b| b.id == ev.backend_id).context("unknown backend")?;
        let Some(check) = &b.check else { return Ok(()) };
        let change = self.health.get_mut(&b.id).and_then(|h| h.observe(ev.result.is_ok(), check.rise, check.fall));
        let Some(up) = change else { return Ok(()) };
        let unresolved = self.hops.unresolved().contains(&b.id);
        let down = self.down();
        // Coming up: the backend entry before the tables that point at it.
        // Going down: the tables first, then its tracked flows per on_down.
        if up && vip.on_down == OnDown::Reschedule && !unresolved {
            self.dp.restore_backend(b.id)?;
        }
        let (ring, rr, _) = crate::plan::tables(&vip.backends, self.plan.table_size, &down);
        self.dp.write_tables(vip.id, &ring, &rr)?;
        if !up && vip.on_down == OnDown::Reschedule {
            self.dp.remove_backend(b.id)?;
        }
        let name = crate::config::esc(&vip.name);
        match (&ev.result, up) {
            (Err(why), false) => tracing::warn!(
                "backend {} of {name} is DOWN after {} failed checks ({why}); {} backends left in rotation",
                b.addr,
                check.fall,
                vip.backends.len() - vip.backends.iter().filter(|x| down.contains(&x.id)).count()
            ),
            _ if unresolved => {
                tracing::info!("backend {} of {name} passes its checks; still unresolved (no MAC)", b.addr)
            }
            _ => tracing::info!("backend {} of {name} is UP after {} good checks; back in rotation", b.addr, check.rise),
        }
        Ok(())
    }

    /// A neighbour the instance follows changed (or was re-read): backends
    /// behind it get its MAC; unresolved ones join their VIPs' tables.
    fn on_neighbour(&mut self, n: crate::netlink::Neighbour) -> Result<()> {
        let Some(mac) = n.mac else { return Ok(()) };
        if n.state == crate::netlink::NudState::Unusable {
            return Ok(()); // the last MAC stays; health checks judge
        }
        let ids: Vec<u32> = self
            .hops
            .followed
            .iter()
            .filter(|(_, f)| f.neighbour == n.ip && f.ifindex == n.ifindex)
            .map(|(id, _)| *id)
            .collect();
        let mut vips_to_rewrite = BTreeSet::new();
        for id in ids {
            let f = self.hops.followed[&id];
            let hop = NextHop { mac, src_mac: f.src_mac, tx_port: f.tx_port };
            let Some((vip, b)) = self.plan.vips.iter().find_map(|v| v.backends.iter().find(|b| b.id == id).map(|b| (v, b))) else {
                continue;
            };
            match self.hops.hops.get(&id) {
                Some(h) if h.mac == mac => {}
                Some(h) => {
                    tracing::info!(
                        "backend {}: MAC {} -> {} (neighbour table)",
                        b.addr,
                        crate::config::format_mac(&h.mac),
                        crate::config::format_mac(&mac)
                    );
                    self.dp.set_backend_mac(id, &hop)?;
                    self.hops.hops.insert(id, hop);
                }
                None => {
                    self.dp.write_backend(vip, b, &hop, true)?;
                    if self.health.get(&id).is_some_and(|h| !h.up) && vip.on_down == OnDown::Reschedule {
                        self.dp.remove_backend(id)?;
                    }
                    self.hops.hops.insert(id, hop);
                    tracing::info!(
                        "backend {} of {} resolved ({}): joins rotation",
                        b.addr,
                        crate::config::esc(&vip.name),
                        crate::config::format_mac(&mac)
                    );
                    vips_to_rewrite.insert(vip.id);
                }
            }
        }
        for v in vips_to_rewrite {
            self.rewrite_vip(v)?;
        }
        Ok(())
    }

    fn snapshot_now(&self) -> Result<Snapshot> {
        let unresolved = self.hops.unresolved();
        let flows = self.flows.load(Ordering::Relaxed);
        Snapshot::collect(
            &self.dp,
            &self.plan,
            &self.iface.name,
            &self.mode,
            self.started,
            &|id| {
                if unresolved.contains(&id) {
                    return Some("down (unresolved)".to_string());
                }
                self.health.get(&id).map(|h| if h.up { "up" } else { "down" }.to_string())
            },
            flows,
        )
        .map(|mut s| {
            s.tier = self.tier_status();
            s
        })
    }

    /// The config's and the data plane's fingerprints; computed anew only
    /// after a write to the tables, and then the live one reads again only
    /// the tables written (see fingerprint::live).
    fn fingerprints(&mut self) -> Result<Fingerprints> {
        let writes = self.dp.table_writes();
        if let Some((w, f)) = &self.fingerprints {
            if *w == writes {
                return Ok(f.clone());
            }
        }
        // From what the core wrote, not read back from the kernel: no walk of
        // the tables on this thread (tests/consistency.rs shows both agree).
        let live = fingerprint::live_of_plan(&self.plan, &self.down(), &mut self.live_cache);
        let f = Fingerprints { config: fingerprint::config(&self.plan).to_string(), live: live.to_string() };
        self.fingerprints = Some((writes, f.clone()));
        Ok(f)
    }
}

impl Service for Instance {
    fn snapshot(&mut self) -> Result<Snapshot> {
        let mut s = self.snapshot_now()?;
        s.fingerprint = Some(self.fingerprints()?);
        Ok(s)
    }

    fn lookup(&mut self, t: &crate::tier::lookup::Tuple) -> Result<crate::tier::lookup::Answer> {
        crate::tier::lookup::live(&self.dp, &self.plan, t)
    }

    fn diff(&mut self, config: Option<&str>) -> Result<Vec<String>> {
        let cfg = Config::load(config.unwrap_or(&self.config))?;
        let new = Plan::build_after(&cfg, Some(&self.plan))?;
        Ok(crate::plan::diff(&self.plan, &new))
    }

    fn reload(&mut self) -> Result<String> {
        let cfg = Config::load(&self.config)?;
        let new = Plan::build_after(&cfg, Some(&self.plan))?;
        let changes = crate::plan::diff(&self.plan, &new);
        for line in &changes {
            tracing::info!("reload: {}", line.trim());
        }
        let hops = settled_hops(&new, &self.iface, &self.hops)?;
        // Down only if still checked: a backend whose check was removed is back.
        let checked = checked_ids(&new);
        let down: BTreeSet<u32> = self.health_down().into_iter().filter(|id| checked.contains(id)).collect();
        // The prober namespace first: a failure there refuses the reload
        // before anything is written.
        if let Err(e) = self.probenet_for(&new) {
            self.restore_probers();
            return Err(e);
        }
        let summary = match self.dp.reload(&self.plan, &new, &hops.hops, &hops.tx, &down) {
            Ok(s) => s,
            Err(e) => {
                self.restore_probers();
                return Err(e);
            }
        };
        self.plan = new;
        self.fingerprints = None;
        self.live_cache.clear();
        self.hops = hops;
        self.update_watched();
        self.start_probers()?;
        self.log_unresolved();
        if let Err(e) = self.start_announcer(None) {
            tracing::error!("announcing: {e:#}");
        }
        if let Err(e) = self.start_sync() {
            tracing::error!("flow sync: {e:#}");
        }
        let n = self.hops.unresolved().len();
        let summary = if n > 0 { format!("{summary}; {n} backends down (unresolved)") } else { summary };
        // The summary names weight changes and drains, not only counts.
        let named: Vec<&str> =
            changes.iter().map(|l| l.trim()).filter(|l| l.contains("weight") || l.contains("drained")).collect();
        Ok(if named.is_empty() { summary } else { format!("{summary}; {}", named.join("; ")) })
    }

    fn trace(&mut self, every: u32) -> Result<(String, Vec<OwnedFd>)> {
        if self.tracing {
            bail!("another weir trace is running on this instance (they would share one ring buffer)");
        }
        let vips: BTreeMap<String, String> = self.plan.vips.iter().map(|v| (v.id.to_string(), v.name.clone())).collect();
        let backends: BTreeMap<String, String> = self
            .plan
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.id.to_string(), b.addr.to_string())))
            .collect();
        let body = serde_json::json!({ "ok": true, "vips": vips, "backends": backends }).to_string();
        let fd = self.dp.skel.maps.trace_rb.as_fd().try_clone_to_owned()?;
        self.dp.set_trace(every)?;
        self.tracing = true;
        tracing::info!("tracing one packet in {every} for a client");
        Ok((body, vec![fd]))
    }

    fn trace_off(&mut self) {
        if self.tracing {
            self.tracing = false;
            let _ = self.dp.set_trace(0);
            tracing::info!("tracing off");
        }
    }

    fn handoff(&mut self) -> Result<(String, Vec<OwnedFd>)> {
        if self.drain.is_some() {
            bail!("this instance is draining (weir drain): it stops by itself; start the new one after it");
        }
        let maps = self.dp.shareable_maps();
        let mut names: Vec<&str> = maps.iter().map(|(n, _)| n.as_str()).collect();
        let mut fds = vec![self.link.fd().try_clone_to_owned()?];
        for (_, fd) in &maps {
            // SAFETY: the map fds are valid while the data plane lives; dup'd here.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            fds.push(b.try_clone_to_owned()?);
        }
        // The successor keeps the announce device (and its announcements);
        // ours changes nothing until the hand-over ends.
        if let Some(tun) = self.announcer.as_ref().and_then(|a| a.tun_fd()) {
            fds.push(tun.try_clone_to_owned()?);
            names.push(crate::handoff::ANNOUNCE_FD);
        }
        if let Some(a) = &self.announcer {
            a.pause(true);
        }
        let down: Vec<u32> = self.health_down().into_iter().collect();
        let ids = crate::plan::PlanIds::of(&self.plan, down);
        let body = serde_json::json!({ "maps": names, "mode": self.mode, "ids": ids }).to_string();
        Ok((body, fds))
    }

    fn handoff_failed(&mut self) {
        if let Some(a) = &self.announcer {
            a.pause(false);
        }
        // It may have swapped its program in before failing: put ours back,
        // the one whose constants and trace switch this instance owns.
        let r = self
            .link
            .fd()
            .try_clone_to_owned()
            .map_err(anyhow::Error::from)
            .and_then(|l| crate::handoff::link_update(&l, self.dp.prog_fd()));
        match r {
            Ok(()) => tracing::warn!("the new instance went away before taking over; still serving with our program"),
            Err(e) => tracing::error!("the new instance went away; restoring our program failed: {e:#}"),
        }
        // It may have written the shared maps too (flipped table halves):
        // learn the live halves anew and write this instance's tables again.
        let r = self.dp.adopt_live(&self.plan).and_then(|()| {
            for v in &self.plan.vips {
                self.rewrite_vip(v.id)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!("rewriting the tables after a failed hand-over: {e:#}");
        }
    }

    fn event(&mut self, m: Msg) {
        let r = match m {
            Msg::Health(gen, ev) if gen == self.health_gen => self.on_health(ev).context("applying a health change"),
            Msg::Neighbour(n) => self.on_neighbour(n).context("applying a neighbour change"),
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!("{e:#}");
        }
        self.announce();
    }

    fn drain(&mut self, timeout: Duration, quiet: Duration) -> Result<String> {
        if let Some(a) = &self.announcer {
            a.drain();
        }
        let what = if self.announcer.is_some() { "announcements withdrawn" } else { "nothing announced (tier.announce is off)" };
        self.drain = Some(Drain {
            started: Instant::now(),
            timeout,
            quiet,
            forwarded: self.forwarded(),
            last_change: Instant::now(),
            done: false,
        });
        let msg = format!(
            "draining: {what}; serving until no packet came for {} s or {} s passed, then stopping",
            quiet.as_secs_f64(),
            timeout.as_secs_f64()
        );
        tracing::warn!("{msg}");
        Ok(msg)
    }

    fn done(&self) -> bool {
        self.drain.as_ref().is_some_and(|d| d.done)
    }

    fn tick(&mut self) {
        let fwd = if self.drain.is_some() { self.forwarded() } else { 0 };
        if let Some(d) = &mut self.drain {
            if fwd != d.forwarded {
                d.forwarded = fwd;
                d.last_change = Instant::now();
            }
            if !d.done && (d.last_change.elapsed() >= d.quiet || d.started.elapsed() >= d.timeout) {
                d.done = true;
                tracing::warn!(
                    "drained after {:.1} s ({}): stopping",
                    d.started.elapsed().as_secs_f64(),
                    if d.last_change.elapsed() >= d.quiet { "no packet came for the quiet time" } else { "timeout" }
                );
            }
        }
        // NAT flows that timed out give their ports back (the reverse table
        // is a plain hash: full means "no port", never "evict a live flow").
        if self.last_sweep.elapsed() >= Duration::from_secs(2) {
            self.last_sweep = Instant::now();
            if let Err(e) = self.dp.sweep_nat(2) {
                tracing::warn!("sweeping expired NAT flows: {e:#}");
            }
        }
        // Fragmented datagrams' entries, every half timeout (an in-kernel
        // walk of fragments.max_datagrams entries, well under a millisecond
        // at the default size).
        let every = Duration::from_millis(u64::from(self.plan.fragments.timeout_ms / 2).max(200));
        if self.last_frag_sweep.elapsed() >= every {
            self.last_frag_sweep = Instant::now();
            if let Err(e) = self.dp.sweep_frags() {
                tracing::warn!("sweeping expired fragment entries: {e:#}");
            }
        }
        // The interface's addresses, once a second over netlink (a local
        // request, no client in the way): NAT and tunnel VIPs without a
        // source_address send from the interface's current one.
        if self.last_addr_check.elapsed() >= Duration::from_secs(1) {
            self.last_addr_check = Instant::now();
            match Iface::lookup(&self.iface.name) {
                Ok(now) if now.mac != self.iface.mac && !self.mac_stale => {
                    tracing::error!(
                        "{}: MAC now {} (the program was loaded with {}): frames to the new MAC pass unbalanced; \
                         announcements withdrawn; restart weir (a hand-over reloads the program)",
                        self.iface.name,
                        crate::config::format_mac(&now.mac),
                        crate::config::format_mac(&self.iface.mac)
                    );
                    self.mac_stale = true;
                    self.announce();
                }
                Ok(now) if now.addrs != self.iface.addrs => {
                    tracing::info!("{}: addresses now {:?} (were {:?})", self.iface.name, now.addrs, self.iface.addrs);
                    self.iface.addrs = now.addrs.clone();
                    match self.dp.follow_addresses(&self.plan, now.addrs) {
                        Ok(lines) => lines.iter().for_each(|l| tracing::info!("{l}")),
                        Err(e) => tracing::warn!("following the interface's addresses: {e:#}"),
                    }
                    // Data-path probes from the interface's address follow it.
                    let had = self.probenet.as_ref().map(|n| n.source);
                    let plan = self.plan.clone();
                    match self.probenet_for(&plan) {
                        Ok(()) if self.probenet.as_ref().map(|n| n.source) == had => {}
                        Ok(()) => {
                            if let Err(e) = self.start_probers() {
                                tracing::warn!("restarting the health checks: {e:#}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("data-path health checks: {e:#}");
                            self.restore_probers();
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("reading {}'s addresses: {e:#}", self.iface.name),
            }
        }
    }
}

/// Count the flow table's entries off the core thread, once a second, up
/// to FLOW_COUNT_CAP (a walk is one syscall per entry).
fn flow_counter(dp: &Dataplane, out: Arc<AtomicUsize>) -> Result<()> {
    let flows = crate::dataplane::FlowTables::established(dp)?;
    let nat = libbpf_rs::MapHandle::try_from(&dp.skel.maps.nat_fwd)?;
    std::thread::Builder::new().name("weir-flows".into()).spawn(move || loop {
        use libbpf_rs::MapCore;
        let dsr = flows.count(FLOW_COUNT_CAP);
        let n = dsr + nat.keys().take(FLOW_COUNT_CAP - dsr).count();
        out.store(n, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
    })?;
    Ok(())
}

/// `weir run`: load, fill, attach, serve until stopped or handed over.
pub fn run(o: &Options) -> Result<()> {
    // A panic anywhere ends the process: a half-dead instance must not keep
    // announcing VIPs (the announce device dies with the process) or hold
    // the interface with a stuck core.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let iface_name = o.iface.as_str();
    let cfg = Config::load(&o.config)?;
    Plan::build(&cfg)?; // a bad config fails before anything else happens
    let iface = Iface::lookup(iface_name)?;
    if !o.allow_host_netns {
        crate::net::refuse_host_netns(&format!("attach to {iface_name}"))?;
    }
    // An instance already running here hands over its maps and its link;
    // its ids are kept so its tracked flows and counters keep their meaning.
    let mut handoff = crate::handoff::request(iface_name)?;
    let inherited_tun = handoff.as_mut().and_then(|h| h.tun.take());
    let handed_over = handoff.is_some();
    let prev = handoff.as_ref().map(|h| h.ids.skeleton()).transpose()?;
    let plan = Plan::build_after(&cfg, prev.as_ref())?;
    // No waiting per backend: the probes go out together, and after at
    // most SETTLE a backend still without a MAC starts down
    // (unresolved), followed in the background.
    let hops = settled_hops(&plan, &iface, &HopPlan::default())?;
    let reuse = handoff.as_ref().map(|h| h.maps.as_slice()).unwrap_or(&[]);
    let dp = Dataplane::load_reusing(Settings::for_plan(&plan, &iface), reuse)?;
    let inherited_down: BTreeSet<u32> = handoff.as_ref().map(|h| h.ids.down.iter().copied().collect()).unwrap_or_default();
    match &prev {
        Some(prev) => {
            dp.adopt_live(prev)?;
            dp.reload(prev, &plan, &hops.hops, &hops.tx, &inherited_down)?;
        }
        None => dp.apply_down(&plan, &hops.hops, &hops.tx, &BTreeSet::new())?,
    }

    // A fresh start makes the prober namespace before attaching: a node
    // that cannot run its data-path checks never serves. (After a
    // take-over it is made below, once the old instance, whose probe
    // replies go through the same maps, has gone.)
    let early_probenet = match (&handoff, probe_source(&plan, &iface)?) {
        (None, Some(a)) => Some(ProbeNet::create(&dp, &iface, a)?),
        _ => None,
    };
    let mut metrics = None;
    let (link, control) = match handoff {
        Some(mut h) => {
            // The running program is replaced in place: the interface is
            // never without one, the old instance goes after the swap.
            crate::handoff::link_update(&h.link, dp.prog_fd())?;
            let fd = std::mem::replace(&mut h.link, std::fs::File::open("/dev/null")?.into());
            let mode = h.mode.clone();
            h.release()?;
            let path = crate::control::socket_path(iface_name)?;
            let t = Instant::now();
            while path.exists() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::info!("took over {} from the running instance (maps, flows and counters kept)", iface.name);
            let link = XdpLink::adopt(fd, iface_name, &mode);
            // After a take-over the link is ours alone: failing here would
            // detach the interface, so the control socket and metrics are
            // retried (the old instance frees them as it exits).
            let t = Instant::now();
            let control = loop {
                match ControlSocket::bind(iface_name) {
                    Ok(c) => break c,
                    Err(e) if t.elapsed() > Duration::from_secs(20) => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            if let Some(addr) = o.metrics.as_deref() {
                let t = Instant::now();
                metrics = loop {
                    match MetricsServer::bind(addr) {
                        Ok(m) => break Some(m),
                        Err(e) if t.elapsed() > Duration::from_secs(10) => {
                            tracing::error!("metrics not served: {e:#}");
                            break None;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
            }
            (link, control)
        }
        // Nothing is attached before this point; the link detaches when dropped.
        None => {
            // An unusable /run/weir or metrics address fails here, before
            // anything is attached.
            let control = ControlSocket::bind(iface_name)?;
            metrics = o.metrics.as_deref().map(MetricsServer::bind).transpose()?;
            (attach(dp.prog_fd(), &iface, o.mode)?, control)
        }
    };
    let (tx, rx) = channel();
    let flows = Arc::new(AtomicUsize::new(0));
    flow_counter(&dp, flows.clone())?;
    let watched: Watched = Arc::new(Mutex::new(BTreeSet::new()));
    let mode = link.mode.to_string();
    let mut inst = Instance {
        dp,
        plan,
        iface,
        config: o.config.clone(),
        link,
        mode,
        started: Instant::now(),
        health: BTreeMap::new(),
        probers: None,
        probenet: early_probenet,
        health_gen: 0,
        hops,
        watched: watched.clone(),
        tracing: false,
        flows,
        core: tx.clone(),
        last_sweep: Instant::now(),
        last_frag_sweep: Instant::now(),
        last_addr_check: Instant::now(),
        announcer: None,
        mac_stale: false,
        drain: None,
        sync: None,
        fingerprints: None,
        live_cache: Default::default(),
    };
    inst.probenet_for(&inst.plan.clone())?;
    inst.start_probers()?;
    // Taken over from a running instance: its backends were seen alive (a
    // hand-over must not withdraw announcements while checks restart).
    if handed_over {
        for h in inst.health.values_mut() {
            h.proven = true;
        }
    }
    for id in &inherited_down {
        if let Some(h) = inst.health.get_mut(id) {
            *h = Health::down();
        }
    }
    inst.update_watched();
    // After a take-over the link is ours alone: a tier error is logged (and
    // retried by the next reload), not allowed to detach the node.
    match (inst.start_announcer(inherited_tun), handed_over) {
        (Err(e), true) => tracing::error!("announcing: {e:#}"),
        (r, _) => r?,
    }
    match (inst.start_sync(), handed_over) {
        (Err(e), true) => tracing::error!("flow sync: {e:#}"),
        (r, _) => r?,
    }
    super::serve::signals(tx.clone())?;
    super::neigh::start(watched, tx.clone())?;
    super::serve::control(control.listener().try_clone()?, tx.clone())?;
    if let Some(m) = &metrics {
        super::serve::metrics(m.listener().try_clone()?, tx.clone())?;
    }
    eprint!("{}", inst.plan.describe());
    eprintln!("fingerprint: {}", fingerprint::config(&inst.plan));
    tracing::info!("attached to {} in {} mode; Ctrl-C or SIGTERM detaches", inst.iface.name, inst.link.mode);
    inst.log_unresolved();
    super::notify::ready(None);
    let outcome = super::run_core(&mut inst, &rx, o.interval);
    super::notify::stopping();
    if outcome == Outcome::HandedOver {
        // Free the socket path first (the successor waits for it), then the
        // rest. Our link fd closes, but the successor holds the link: it stays.
        drop(control);
        tracing::info!("handed {} over to a new instance; exiting without detaching", inst.iface.name);
        return Ok(());
    }
    // Withdraw first (the device goes, the BGP daemon withdraws), then
    // detach: the probers and the rest go after.
    let Instance { link, iface, dp, probers, probenet, announcer, .. } = inst;
    drop(announcer);
    drop(link);
    tracing::info!("detached from {}", iface.name);
    drop(control);
    drop(probers);
    drop(probenet);
    drop(dp);
    Ok(())
}
