//! Backends' MACs follow the kernel's neighbour table: neighbour events
//! (rtnetlink) reach the core as they happen; once a second the table is
//! read whole (events can be lost), neighbours without a usable entry are
//! probed, and STALE ones re-probed so a replaced NIC is found, not trusted
//! forever.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Msg;
use crate::netlink::{Event, NudState, Rtnl, Subscription, GROUP_NEIGH};

/// The neighbours (address, ifindex) the core follows; it replaces the set
/// at every reload.
pub type Watched = Arc<Mutex<BTreeSet<(IpAddr, u32)>>>;

pub const RESCAN: Duration = Duration::from_secs(1);

pub fn start(watched: Watched, core: Sender<Msg>) -> Result<()> {
    let mut sub = Subscription::open(GROUP_NEIGH)?;
    let mut nl = Rtnl::open()?;
    std::thread::Builder::new()
        .name("weir-neighbours".into())
        .spawn(move || {
            let mut last_scan = Instant::now() - RESCAN;
            loop {
                let mut rescan = last_scan.elapsed() >= RESCAN;
                match sub.next(Duration::from_millis(200)) {
                    Ok(events) => {
                        let w = watched.lock().map(|w| w.clone()).unwrap_or_default();
                        for e in events {
                            if let Event::Neighbour(n) = e {
                                if w.contains(&(n.ip, n.ifindex)) && core.send(Msg::Neighbour(n)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // Lost events (a full buffer): read the table now.
                    Err(_) => rescan = true,
                }
                if !rescan {
                    continue;
                }
                last_scan = Instant::now();
                let w = watched.lock().map(|w| w.clone()).unwrap_or_default();
                if w.is_empty() {
                    continue;
                }
                let Ok(table) = nl.neighbours() else { continue };
                for (ip, ifindex) in &w {
                    match table.iter().find(|n| n.ip == *ip && n.ifindex == *ifindex) {
                        Some(n) if n.mac.is_some() && n.state != NudState::Unusable => {
                            if n.state == NudState::Unconfirmed {
                                crate::net::probe_neighbour(*ip);
                            }
                            if core.send(Msg::Neighbour(n.clone())).is_err() {
                                return;
                            }
                        }
                        _ => crate::net::probe_neighbour(*ip),
                    }
                }
            }
        })
        .context("starting the neighbour thread")?;
    Ok(())
}
