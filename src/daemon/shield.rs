//! `weir shield`: the SYN-flood shield alone, served like an instance
//! (control socket, metrics, signals) through the same core loop.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::channel;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::instance::Options;
use super::{Msg, Service};
use crate::attach::attach;
use crate::control::ControlSocket;
use crate::metrics::MetricsServer;
use crate::net::Iface;
use crate::stats::Snapshot;

struct Shield {
    sp: crate::shield::Standalone,
    ports: Vec<u16>,
    iface: String,
    mode: String,
    started: Instant,
}

impl Service for Shield {
    fn snapshot(&mut self) -> Result<Snapshot> {
        Snapshot::collect_shield(&self.sp, &self.ports, &self.iface, &self.mode, self.started)
    }
    fn reload(&mut self) -> Result<String> {
        bail!("weir shield reads its config at start only: restart it")
    }
    fn trace(&mut self, _: u32) -> Result<(String, Vec<OwnedFd>)> {
        bail!("weir shield has no trace yet")
    }
    fn trace_off(&mut self) {}
    fn handoff(&mut self) -> Result<(String, Vec<OwnedFd>)> {
        bail!("weir shield does not hand over; stop it first")
    }
    fn handoff_failed(&mut self) {}
    fn event(&mut self, _: Msg) {}
    fn tick(&mut self) {}
}

pub fn run(o: &Options) -> Result<()> {
    let (iface_name, config) = (o.iface.as_str(), o.config.as_str());
    let text = crate::config::read_capped(config)?;
    let config = crate::config::esc(config);
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        shield: Option<crate::config::Shield>,
    }
    let f: File = toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {config}: {e}"))?;
    let sh = f.shield.with_context(|| format!("invalid config {config}: no [shield] section"))?;
    sh.validate().with_context(|| format!("invalid config {config}"))?;
    let iface = Iface::lookup(iface_name)?;
    if !o.allow_host_netns {
        crate::net::refuse_host_netns(&format!("attach to {iface_name}"))?;
    }
    let sp = crate::shield::Standalone::load(&sh).with_context(|| format!("invalid config {config}"))?;
    let control = ControlSocket::bind(iface_name)?;
    let metrics = o.metrics.as_deref().map(MetricsServer::bind).transpose()?;
    let link = attach(sp.skel.progs.weir_shield.as_fd(), &iface, o.mode)?;
    tracing::info!(
        "weir shield: attached to {} in {} mode, protecting tcp ports {:?}; Ctrl-C or SIGTERM detaches",
        iface.name,
        link.mode,
        sh.ports
    );
    let (tx, rx) = channel();
    super::serve::signals(tx.clone())?;
    super::serve::control(control.listener().try_clone()?, tx.clone())?;
    if let Some(m) = &metrics {
        super::serve::metrics(m.listener().try_clone()?, tx.clone())?;
    }
    let mut svc = Shield { sp, ports: sh.ports.clone(), iface: iface.name.clone(), mode: link.mode.to_string(), started: Instant::now() };
    super::notify::ready(None);
    super::run_core(&mut svc, &rx, o.interval);
    super::notify::stopping();
    drop(link);
    tracing::info!("weir shield: detached from {}", iface.name);
    Ok(())
}
