//! One benchmark run: rounds of fresh proxies, each round measuring every
//! target in turn for every metric (the starting target rotates per
//! round), so postern and its references see the same background load
//! within a few seconds of each other.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use serde::Serialize;

use crate::client::{direct_connector, Endpoint, Kind};
use crate::error::{BenchError, Result};
use crate::fake::FakeUpstreams;
use crate::measure::{Metric, Probe, Sample};
use crate::phases::memory::{self, MemorySample};
use crate::phases::transfer::{self, SlowSample};
use crate::phases::{rates, script};
use crate::procfs;
use crate::profile::Profile;
use crate::proxies::{self, Proc, Upstreams};

/// The phases, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// RSS per idle session at each step, then after the burst ends.
    Memory,
    /// RSS while a client reads a large RETR slowly.
    Slow,
    /// Sessions per second at 1, 32 and 128 clients (and resumption).
    Sessions,
    /// RETR on 1 and 4 sessions.
    Retr,
    /// SMTP DATA.
    Data,
    /// NOOPs per second on 64 sessions.
    Noop,
}

/// Everything a run needs, set up once.
#[derive(Debug)]
pub struct Setup {
    pub profile: Profile,
    pub phases: Vec<Phase>,
    pub postern: PathBuf,
    pub stunnel: PathBuf,
    pub work_dir: PathBuf,
    pub ca: PathBuf,
    pub upstream: FakeUpstreams,
    pub client_tls: Arc<rustls::ClientConfig>,
    /// The message body, for DATA (the upstream serves the same for RETR).
    pub body: Arc<[u8]>,
    pub ticks_per_second: f64,
}

/// Everything measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub memory: Vec<MemorySample>,
    pub slow_reader: Vec<SlowSample>,
    /// `/proc/loadavg` at the start of each round and at the end.
    pub loadavg: Vec<(String, String)>,
}

/// One target of a round: its two services and how to read its counters.
#[derive(Debug, Clone)]
struct Target {
    pop3: Endpoint,
    smtp: Endpoint,
    probe: Probe,
}

impl Setup {
    fn wants(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    fn upstreams(&self) -> Upstreams<'_> {
        Upstreams {
            pop3: self.upstream.pop3,
            smtp: self.upstream.smtp,
            ca: &self.ca,
        }
    }

    fn target(&self, kind: Kind, proc: Option<&Proc>) -> Result<Target> {
        let step = self.profile.step;
        let tls = match kind {
            Kind::Direct => {
                let name = ServerName::try_from(proxies::UPSTREAM_NAME)
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                Some((direct_connector(self.client_tls.clone()), name))
            }
            _ => None,
        };
        let (pop3, smtp) = match proc {
            Some(p) => (p.pop3, p.smtp),
            None => (self.upstream.pop3, self.upstream.smtp),
        };
        Ok(Target {
            pop3: Endpoint {
                kind,
                addr: pop3,
                tls: tls.clone(),
                step,
            },
            smtp: Endpoint {
                kind,
                addr: smtp,
                tls,
                step,
            },
            probe: Probe {
                pid: proc.map(Proc::pid),
                upstream: self.upstream.stats.clone(),
                ticks_per_second: self.ticks_per_second,
            },
        })
    }
}

/// Runs every round.
pub async fn run(setup: Arc<Setup>) -> Result<Results> {
    let mut results = Results::default();
    for round in 0..setup.profile.rounds {
        let load = procfs::loadavg();
        eprintln!(
            "postern-bench: round {}/{} (load {load})",
            round + 1,
            setup.profile.rounds
        );
        results.loadavg.push((format!("round {}", round + 1), load));
        run_round(&setup, round, &mut results).await?;
    }
    results.loadavg.push(("end".to_owned(), procfs::loadavg()));
    Ok(results)
}

/// The targets in this round's order: the first one rotates.
fn order(round: usize) -> [Kind; 3] {
    let mut kinds = Kind::ALL;
    kinds.rotate_left(round % Kind::ALL.len());
    kinds
}

async fn run_round(setup: &Setup, round: usize, results: &mut Results) -> Result<()> {
    let tag = format!("r{}", round + 1);
    let up = setup.upstreams();
    let mut postern = proxies::start_postern(&setup.postern, &setup.work_dir, &tag, &up).await?;
    let mut stunnel = proxies::start_stunnel(&setup.stunnel, &setup.work_dir, &tag, &up).await?;
    let mut targets = Vec::new();
    for kind in order(round) {
        let proc = match kind {
            Kind::Postern => Some(&postern),
            Kind::Stunnel => Some(&stunnel),
            Kind::Direct => None,
        };
        targets.push(setup.target(kind, proc)?);
    }
    for t in &targets {
        warm_up(t).await?;
    }
    // The slow reader and the memory phase before the rates, on fresh
    // processes: the baselines are then the process's own, not what
    // earlier phases left allocated. The slow reader goes first: after a
    // burst, freed but resident memory would hide a proxy's growth.
    if setup.wants(Phase::Slow) {
        for t in &targets {
            let Some(pid) = t.probe.pid else { continue };
            let s =
                transfer::slow_reader(&t.pop3, pid, setup.body.len(), &setup.profile, round).await;
            eprintln!(
                "  slow reader {:8}: RSS {} -> max {} KiB over {:.1}s{}",
                t.pop3.kind.name(),
                s.before_kib,
                s.max_kib,
                s.slow_s,
                error_note(s.first_error.as_deref())
            );
            results.slow_reader.push(s);
        }
    }
    if setup.wants(Phase::Memory) {
        memory_phase(setup, &targets, round, results).await;
    }
    rate_phases(setup, &targets, round, results).await;
    postern.check_alive()?;
    stunnel.check_alive()?;
    Ok(())
}

/// A few sessions through each target before anything is measured; a
/// target that does not work fails the run here, loudly.
async fn warm_up(t: &Target) -> Result<()> {
    let what = t.pop3.kind.name();
    let fail = |e: BenchError| BenchError::Setup(format!("warm-up through {what}: {e}"));
    for _ in 0..8 {
        script::pop3_session(&t.pop3).await.map_err(fail)?;
    }
    let mut c = script::smtp_to_data(&t.smtp, crate::client::LINE_BUFFER)
        .await
        .map_err(fail)?;
    let body = b"Subject: warm-up\r\n\r\nhello\r\n";
    c.send("DATA", body).await.map_err(fail)?;
    c.send("end of data", b".\r\n").await.map_err(fail)?;
    let reply = c.smtp("end of data", b"250").await.map_err(fail)?;
    if script::received_octets(&reply) != Some(body.len() as u64) {
        return Err(fail(BenchError::reply("warm-up end of data", &reply)));
    }
    c.send("QUIT", b"QUIT\r\n").await.map_err(fail)?;
    c.smtp("QUIT", b"221").await.map_err(fail)?;
    Ok(())
}

async fn memory_phase(setup: &Setup, targets: &[Target], round: usize, results: &mut Results) {
    let mut samples = Vec::new();
    for t in targets {
        let Some(pid) = t.probe.pid else { continue };
        let m = memory::burst(&t.pop3, pid, &setup.profile, round).await;
        for s in &m.steps {
            eprintln!(
                "  idle {:8}: {:5} sessions, RSS {} KiB, {:.1} KiB/session, {:?} fds",
                t.pop3.kind.name(),
                s.sessions,
                s.rss_kib,
                s.per_session_kib,
                s.fds
            );
        }
        samples.push(m);
    }
    // The waits overlap: one proxy's wait runs while the other is loaded
    // (an idle process's RSS does not depend on the other's load).
    for m in &mut samples {
        m.finish(setup.profile.burst_wait).await;
        eprintln!(
            "  burst {:8}: baseline {} KiB, closed {} KiB, after {:.0}s {:?} KiB ({:?} fds){}",
            m.target.name(),
            m.baseline_kib,
            m.closed_kib,
            m.wait_s,
            m.after_wait_kib,
            m.after_wait_fds,
            error_note(m.first_error.as_deref())
        );
    }
    results.memory.extend(samples);
}

async fn rate_phases(setup: &Setup, targets: &[Target], round: usize, results: &mut Results) {
    let p = &setup.profile;
    let len = setup.body.len();
    for metric in Metric::ALL {
        let phase = match metric {
            Metric::Sessions1 | Metric::Sessions32 | Metric::Sessions128 => Phase::Sessions,
            Metric::Retr1 | Metric::Retr4 => Phase::Retr,
            Metric::Data => Phase::Data,
            Metric::Noop64 => Phase::Noop,
        };
        if !setup.wants(phase) {
            continue;
        }
        for t in targets {
            let sample = match metric {
                Metric::Sessions1 | Metric::Sessions32 | Metric::Sessions128 => {
                    rates::sessions(&t.pop3, metric, p, &t.probe, round).await
                }
                Metric::Retr1 | Metric::Retr4 => {
                    transfer::retr(&t.pop3, metric, len, p, &t.probe, round).await
                }
                Metric::Data => transfer::data(&t.smtp, &setup.body, p, &t.probe, round).await,
                Metric::Noop64 => rates::noops(&t.pop3, metric, p, &t.probe, round).await,
            };
            report_sample(&sample);
            results.samples.push(sample);
        }
    }
}

fn report_sample(s: &Sample) {
    let hs = s.usage.handshakes;
    eprintln!(
        "  {:30} {:8}: {:>10} (cpu: proxy {}, loadgen {:.2} cores, upstream {:.2} cores; handshakes {} full {} resumed){}{}",
        s.metric.label(),
        s.target.name(),
        s.value.map_or("-".to_owned(), |v| format!("{v:.1}")),
        s.usage
            .proxy_cpu_s
            .map_or("-".to_owned(), |c| format!("{c:.2}s")),
        s.usage.loadgen_cores(),
        if s.usage.wall_s > 0.0 { s.usage.upstream_cpu_s / s.usage.wall_s } else { 0.0 },
        hs.full,
        hs.resumed,
        if s.errors > 0 { format!(", {} errors", s.errors) } else { String::new() },
        error_note(s.first_error.as_deref()),
    );
}

fn error_note(e: Option<&str>) -> String {
    e.map(|e| format!(" [first error: {e}]"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_leads_one_round_in_three() {
        let leads: Vec<Kind> = (0..3).map(|r| order(r)[0]).collect();
        assert_eq!(leads, vec![Kind::Postern, Kind::Stunnel, Kind::Direct]);
        for r in 0..5 {
            let mut o = order(r).to_vec();
            o.sort();
            assert_eq!(o, Kind::ALL.to_vec());
        }
    }
}
