//! The summary: medians per target, medians of per-round ratios, each
//! next to the target of issue 14, printed as a table and kept as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::Kind;
use crate::measure::{Metric, Sample};
use crate::phases::memory::MemorySample;
use crate::phases::transfer::SlowSample;
use crate::run::Results;
use crate::stats::{median, median_ratio, ratios};

/// Issue 14's targets for postern / stunnel and postern / direct.
pub fn goal(metric: Metric) -> (Option<f64>, Option<f64>) {
    match metric {
        Metric::Sessions1 => (Some(1.5), Some(0.6)),
        Metric::Sessions32 | Metric::Sessions128 => (Some(1.6), Some(0.75)),
        Metric::Retr1 | Metric::Retr4 | Metric::Data => (Some(1.1), Some(0.7)),
        Metric::Noop64 => (None, Some(0.6)),
    }
}

/// Upstream TLS resumption postern should reach at 128 clients.
pub const RESUMPTION_GOAL: f64 = 0.90;
/// RSS per idle session postern should stay within, in KiB.
pub const IDLE_SESSION_GOAL_KIB: f64 = 16.0;
/// RSS after a burst, relative to before it.
pub const AFTER_BURST_GOAL: f64 = 1.25;
/// postern's CPU per GiB relative to stunnel's.
pub const CPU_PER_GIB_GOAL: f64 = 0.9;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: Metric,
    pub label: &'static str,
    /// Medians over rounds.
    pub postern: Option<f64>,
    pub stunnel: Option<f64>,
    pub direct: Option<f64>,
    /// Medians over rounds of the per-round ratios.
    pub postern_vs_stunnel: Option<f64>,
    pub postern_vs_direct: Option<f64>,
    /// The per-round ratios the medians come from.
    pub postern_vs_stunnel_rounds: Vec<f64>,
    pub postern_vs_direct_rounds: Vec<f64>,
    pub goal_vs_stunnel: Option<f64>,
    pub goal_vs_direct: Option<f64>,
    /// Every goal of the row met; `None` if a ratio is missing.
    pub met: Option<bool>,
    pub errors: u64,
    /// Direct-TLS above both proxies: the load generator and the upstream
    /// could go faster than either proxy went.
    pub direct_above_both: Option<bool>,
    /// The load generator's busiest window in this metric, in cores.
    pub loadgen_cores_max: f64,
    /// Proxy CPU: seconds per GiB (bulk) or milliseconds per session.
    pub postern_cpu: Option<f64>,
    pub stunnel_cpu: Option<f64>,
    pub cpu_unit: Option<&'static str>,
    /// Median per-round ratio of postern's CPU to stunnel's (per unit).
    pub cpu_vs_stunnel: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resumption {
    pub target: Kind,
    /// Median over rounds of resumed / all handshakes at 128 clients.
    pub resumed: Option<f64>,
    pub full: u64,
    pub resumed_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub target: Kind,
    /// (sessions, median KiB per session) per step.
    pub per_session_kib: Vec<(usize, Option<f64>)>,
    pub baseline_kib: Option<f64>,
    pub peak_kib: Option<f64>,
    pub after_wait_kib: Option<f64>,
    /// Median of after / before.
    pub after_vs_before: Option<f64>,
    pub slow_reader_growth_kib: Option<f64>,
    pub slow_reader_max_kib: Option<f64>,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub resumption: Vec<Resumption>,
    pub memory: Vec<MemoryRow>,
}

fn per_round<F: Fn(&Sample) -> Option<f64>>(
    samples: &[Sample],
    metric: Metric,
    kind: Kind,
    rounds: usize,
    f: F,
) -> Vec<Option<f64>> {
    (0..rounds)
        .map(|r| {
            samples
                .iter()
                .find(|s| s.metric == metric && s.target == kind && s.round == r)
                .and_then(&f)
        })
        .collect()
}

fn med(v: &[Option<f64>]) -> Option<f64> {
    median(&v.iter().flatten().copied().collect::<Vec<_>>())
}

pub fn summarise(results: &Results, rounds: usize) -> Summary {
    let s = &results.samples;
    let rows = Metric::ALL
        .iter()
        .filter(|m| s.iter().any(|x| x.metric == **m))
        .map(|&m| row(s, m, rounds))
        .collect();
    let resumption = Kind::ALL
        .iter()
        .map(|&k| {
            let share = |x: &Sample| {
                let h = x.usage.handshakes;
                let all = h.full + h.resumed;
                (all > 0).then(|| h.resumed as f64 / all as f64)
            };
            let of = || {
                s.iter()
                    .filter(|x| x.metric == Metric::Sessions128 && x.target == k)
            };
            Resumption {
                target: k,
                resumed: med(&per_round(s, Metric::Sessions128, k, rounds, share)),
                full: of().map(|x| x.usage.handshakes.full).sum(),
                resumed_count: of().map(|x| x.usage.handshakes.resumed).sum(),
            }
        })
        .collect();
    let memory = [Kind::Postern, Kind::Stunnel]
        .iter()
        .map(|&k| memory_row(&results.memory, &results.slow_reader, k))
        .collect();
    Summary {
        rows,
        resumption,
        memory,
    }
}

fn row(s: &[Sample], m: Metric, rounds: usize) -> Row {
    let value = |k| per_round(s, m, k, rounds, |x| x.value);
    let (p, st, d) = (
        value(Kind::Postern),
        value(Kind::Stunnel),
        value(Kind::Direct),
    );
    let (gs, gd) = goal(m);
    let vs_s = median_ratio(&p, &st);
    let vs_d = median_ratio(&p, &d);
    let check = |goal: Option<f64>, got: Option<f64>| match goal {
        None => Some(true),
        Some(g) => got.map(|v| v >= g),
    };
    let met = match (check(gs, vs_s), check(gd, vs_d)) {
        (Some(a), Some(b)) => Some(a && b),
        _ => None,
    };
    let (pm, sm, dm) = (med(&p), med(&st), med(&d));
    let cpu = |x: &Sample| {
        if m.is_bulk() {
            x.cpu_per_gib()
        } else {
            x.cpu_ms_per_session()
        }
    };
    let (pc, sc) = (
        per_round(s, m, Kind::Postern, rounds, cpu),
        per_round(s, m, Kind::Stunnel, rounds, cpu),
    );
    let ours = s.iter().filter(|x| x.metric == m);
    Row {
        metric: m,
        label: m.label(),
        postern: pm,
        stunnel: sm,
        direct: dm,
        postern_vs_stunnel: vs_s,
        postern_vs_direct: vs_d,
        postern_vs_stunnel_rounds: ratios(&p, &st),
        postern_vs_direct_rounds: ratios(&p, &d),
        goal_vs_stunnel: gs,
        goal_vs_direct: gd,
        met,
        errors: ours.clone().map(|x| x.errors).sum(),
        direct_above_both: match (pm, sm, dm) {
            (Some(p), Some(st), Some(d)) => Some(d > p && d > st),
            _ => None,
        },
        loadgen_cores_max: ours.map(|x| x.usage.loadgen_cores()).fold(0.0, f64::max),
        postern_cpu: med(&pc),
        stunnel_cpu: med(&sc),
        cpu_unit: if m.is_bulk() {
            Some("CPU s/GiB")
        } else if matches!(m, Metric::Noop64) {
            None
        } else {
            Some("CPU ms/session")
        },
        cpu_vs_stunnel: median_ratio(&pc, &sc),
    }
}

fn memory_row(mem: &[MemorySample], slow: &[SlowSample], k: Kind) -> MemoryRow {
    let ours: Vec<&MemorySample> = mem.iter().filter(|m| m.target == k).collect();
    let steps: Vec<usize> = ours
        .first()
        .map(|m| m.steps.iter().map(|s| s.sessions).collect())
        .unwrap_or_default();
    let per_session_kib = (0..steps.len())
        .map(|i| {
            let v: Vec<f64> = ours
                .iter()
                .filter_map(|m| m.steps.get(i).map(|s| s.per_session_kib))
                .collect();
            (steps[i], median(&v))
        })
        .collect();
    let of = |f: &dyn Fn(&MemorySample) -> Option<f64>| {
        median(&ours.iter().filter_map(|m| f(m)).collect::<Vec<_>>())
    };
    let slow: Vec<&SlowSample> = slow.iter().filter(|s| s.target == k).collect();
    MemoryRow {
        target: k,
        per_session_kib,
        baseline_kib: of(&|m| Some(m.baseline_kib as f64)),
        peak_kib: of(&|m| m.steps.last().map(|s| s.rss_kib as f64)),
        after_wait_kib: of(&|m| m.after_wait_kib.map(|v| v as f64)),
        after_vs_before: of(&|m| m.after_vs_before()),
        slow_reader_growth_kib: median(
            &slow.iter().map(|s| s.growth_kib as f64).collect::<Vec<_>>(),
        ),
        slow_reader_max_kib: median(&slow.iter().map(|s| s.max_kib as f64).collect::<Vec<_>>()),
        errors: ours.iter().map(|m| m.errors).sum::<u64>()
            + slow.iter().filter(|s| !s.message_ok).count() as u64,
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// A median with the range of the rounds it came from: `0.57 (0.56–0.84)`.
fn spread(median: Option<f64>, rounds: &[f64]) -> String {
    let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if rounds.len() < 2 {
        return num(median);
    }
    format!("{} ({}–{})", num(median), num(Some(lo)), num(Some(hi)))
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "?",
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{:.0} %", v * 100.0))
}

/// The summary as the text table printed at the end of a run.
pub fn render(sum: &Summary, rounds: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "postern-bench: medians over {rounds} round(s); ratios are medians of per-round ratios (range over rounds)\n"
    );
    let _ = writeln!(
        out,
        "| metric | postern | stunnel | direct | postern / stunnel | postern / direct | goal (/stunnel, /direct) | |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|");
    for r in &sum.rows {
        let goal = format!(
            "{}, {}",
            r.goal_vs_stunnel
                .map_or("-".to_owned(), |g| format!("≥ {g}")),
            r.goal_vs_direct
                .map_or("-".to_owned(), |g| format!("≥ {g}"))
        );
        let mut note = yes_no(r.met).to_owned();
        if r.errors > 0 {
            let _ = write!(note, ", {} errors", r.errors);
        }
        if r.direct_above_both == Some(false) {
            note.push_str(", direct not above both");
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            num(r.postern),
            num(r.stunnel),
            num(r.direct),
            spread(r.postern_vs_stunnel, &r.postern_vs_stunnel_rounds),
            spread(r.postern_vs_direct, &r.postern_vs_direct_rounds),
            goal,
            note
        );
    }
    render_extras(&mut out, sum);
    out
}

fn render_extras(text: &mut String, sum: &Summary) {
    let mut out = String::new();
    extra_rows(&mut out, sum);
    if !out.is_empty() {
        let _ = writeln!(
            text,
            "\n| other metric | postern | stunnel | direct | goal | |"
        );
        let _ = writeln!(text, "|---|---:|---:|---:|---|---|");
        text.push_str(&out);
    }
    if sum.rows.is_empty() {
        return;
    }
    let busiest = sum
        .rows
        .iter()
        .map(|r| r.loadgen_cores_max)
        .fold(0.0, f64::max);
    let above = sum
        .rows
        .iter()
        .filter(|r| r.direct_above_both == Some(true))
        .count();
    let _ = writeln!(
        text,
        "\nload generator: at most {busiest:.2} cores in any window; direct TLS above both proxies in {above} of {} metrics",
        sum.rows.len()
    );
}

fn extra_rows(out: &mut String, sum: &Summary) {
    resumption_row(out, sum);
    cpu_rows(out, sum);
    let mem = |k: Kind| sum.memory.iter().find(|m| m.target == k);
    if let (Some(p), Some(s)) = (mem(Kind::Postern), mem(Kind::Stunnel)) {
        memory_rows(out, p, s);
    }
}

fn resumption_row(out: &mut String, sum: &Summary) {
    let res = |k: Kind| sum.resumption.iter().find(|r| r.target == k);
    if let Some(p) = res(Kind::Postern).filter(|r| r.full + r.resumed_count > 0) {
        let met = p.resumed.map(|v| v >= RESUMPTION_GOAL);
        let _ = writeln!(
            out,
            "| upstream TLS handshakes resumed, 128 clients | {} | {} | {} | postern ≥ 90 % | {} |",
            pct(p.resumed),
            pct(res(Kind::Stunnel).and_then(|r| r.resumed)),
            pct(res(Kind::Direct).and_then(|r| r.resumed)),
            yes_no(met)
        );
    }
}

fn cpu_rows(out: &mut String, sum: &Summary) {
    let with_cpu =
        |r: &&Row| r.cpu_unit.is_some() && (r.postern_cpu.is_some() || r.stunnel_cpu.is_some());
    for r in sum.rows.iter().filter(with_cpu) {
        let bulk = r.metric.is_bulk();
        let met = if bulk {
            yes_no(r.cpu_vs_stunnel.map(|v| v <= CPU_PER_GIB_GOAL))
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| proxy {}, {} | {} | {} | | {} | {} |",
            r.cpu_unit.unwrap_or_default(),
            r.label,
            num(r.postern_cpu),
            num(r.stunnel_cpu),
            if bulk {
                format!("≤ 0.9 × stunnel (is {})", num(r.cpu_vs_stunnel))
            } else {
                format!("(postern / stunnel {})", num(r.cpu_vs_stunnel))
            },
            met
        );
    }
}

fn memory_rows(out: &mut String, p: &MemoryRow, s: &MemoryRow) {
    // A memory phase with errors measured something else than idle
    // sessions (or fewer of them): its figures meet nothing.
    let valid = p.errors == 0;
    for (i, (n, pv)) in p.per_session_kib.iter().enumerate() {
        let sv = s.per_session_kib.get(i).and_then(|x| x.1);
        let met = pv.map(|v| valid && v <= IDLE_SESSION_GOAL_KIB);
        let _ = writeln!(
            out,
            "| RSS per idle logged-in session (KiB), {n} sessions | {} | {} | | ≤ 16 KiB | {} |",
            num(*pv),
            num(sv),
            yes_no(met)
        );
    }
    let mib = |v: Option<f64>| num(v.map(|k| k / 1024.0));
    if p.after_wait_kib.is_some() {
        let _ = writeln!(
                out,
                "| RSS MiB before burst → at peak → after the burst ended (and the wait) | {} → {} → {} | {} → {} → {} | | | |",
                mib(p.baseline_kib),
                mib(p.peak_kib),
                mib(p.after_wait_kib),
                mib(s.baseline_kib),
                mib(s.peak_kib),
                mib(s.after_wait_kib)
            );
        let _ = writeln!(
            out,
            "| RSS after the burst / before | {} | {} | | ≤ 1.25 | {} |",
            num(p.after_vs_before),
            num(s.after_vs_before),
            yes_no(p.after_vs_before.map(|v| valid && v <= AFTER_BURST_GOAL))
        );
    }
    if p.slow_reader_max_kib.is_some() {
        let _ = writeln!(
            out,
            "| slow reader: RSS growth during the RETR (KiB) | {} | {} | | (none set) | |",
            num(p.slow_reader_growth_kib),
            num(s.slow_reader_growth_kib)
        );
    }
    if p.errors + s.errors > 0 {
        let _ = writeln!(
            out,
            "| memory phases: errors | {} | {} | | | |",
            p.errors, s.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{Errors, Usage};

    fn sample(metric: Metric, target: Kind, round: usize, count: u64) -> Sample {
        let usage = Usage {
            wall_s: 1.0,
            ..Usage::default()
        };
        Sample::new(metric, target, round, count, usage, &Errors::default())
    }

    #[test]
    fn ratios_per_round_and_goals() {
        let mut results = Results::default();
        for (round, (p, s, d)) in [(100, 200, 300), (10, 20, 30), (120, 100, 240)]
            .into_iter()
            .enumerate()
        {
            results
                .samples
                .push(sample(Metric::Sessions1, Kind::Postern, round, p));
            results
                .samples
                .push(sample(Metric::Sessions1, Kind::Stunnel, round, s));
            results
                .samples
                .push(sample(Metric::Sessions1, Kind::Direct, round, d));
        }
        let sum = summarise(&results, 3);
        assert_eq!(sum.rows.len(), 1);
        let r = &sum.rows[0];
        assert_eq!(r.postern, Some(100.0));
        assert_eq!(r.postern_vs_stunnel, Some(0.5));
        assert_eq!(r.postern_vs_direct, Some(1.0 / 3.0));
        assert_eq!(r.met, Some(false));
        assert_eq!(r.direct_above_both, Some(true));
        let table = render(&sum, 3);
        // Medians 100, 100, 240: a ratio of medians would say 1.0.
        assert!(
            table.contains(
                "| sessions/s, 1 client | 100 | 100 | 240 | 0.50 (0.50–1.20) | 0.33 (0.33–0.50) | ≥ 1.5, ≥ 0.6 | NOT met |"
            ),
            "{table}"
        );
    }

    #[test]
    fn bulk_values_are_mib_per_second() {
        let s = sample(Metric::Retr1, Kind::Direct, 0, 256 << 20);
        assert_eq!(s.value, Some(256.0));
        assert_eq!(sample(Metric::Retr1, Kind::Direct, 0, 0).value, None);
    }
}
