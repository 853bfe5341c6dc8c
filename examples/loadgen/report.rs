//! The comparison table: every figure of every target with its ratio to the
//! best peer and to direct, then sniroute's figures against issue 5's targets.
//! Printed as Markdown so BENCHMARKS.md can quote it unchanged.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::kernel::KernelBans;
use crate::phases::{Bulk, Closes, Idle, Rate};

/// Everything one `run` measured against one target.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub name: String,
    /// Phases that failed, with why.
    pub failed: Vec<String>,
    pub idle: Option<Idle>,
    pub bulk1: Option<Bulk>,
    pub bulk8: Option<Bulk>,
    pub rate: Option<Rate>,
    pub reject: Option<Closes>,
    pub banned: Option<Closes>,
    /// The kernel-bans phase (sniroute with nftables only).
    #[serde(default)]
    pub kernel: Option<KernelBans>,
}

/// Share of one core used by other processes during a phase above which
/// the phase is flagged as noisy.
const NOISE_SHARE: f64 = 0.1;

/// The row for the ceiling: no proxy at all.
const DIRECT: &str = "direct";
/// The row the targets are checked on: sniroute as shipped (splice on).
const OURS: &str = "sniroute";
/// The peer some targets name explicitly.
const HAPROXY: &str = "haproxy";
/// The cheapest possible reject (`loadgen floor`): a reference, not a peer.
const FLOOR: &str = "floor";
/// Suffix of the rows run with deferred accept (TCP_DEFER_ACCEPT): compared
/// with each other in a table of their own, not with the default rows.
const DEFERRED: &str = "-deferred";

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

struct Figure {
    label: &'static str,
    better: Better,
    /// Whether a ratio to the direct run means anything (not for proxy CPU).
    vs_direct: bool,
    get: fn(&Results) -> Option<f64>,
}

fn figures() -> Vec<Figure> {
    use Better::{Higher, Lower};
    let f = |label, better, vs_direct, get| Figure {
        label,
        better,
        vs_direct,
        get,
    };
    vec![
        f("bulk, 1 conn: GiB/s (both ways)", Higher, true, |r| {
            r.bulk1.as_ref().map(|b| b.gib_per_s)
        }),
        f("bulk, 1 conn: proxy CPU s/GiB", Lower, false, |r| {
            r.bulk1.as_ref()?.cpu_s_per_gib
        }),
        f("bulk, 8 conns: GiB/s (both ways)", Higher, true, |r| {
            r.bulk8.as_ref().map(|b| b.gib_per_s)
        }),
        f("bulk, 8 conns: proxy CPU s/GiB", Lower, false, |r| {
            r.bulk8.as_ref()?.cpu_s_per_gib
        }),
        f("routed conns/s", Higher, true, |r| {
            r.rate.as_ref().map(|x| x.per_s)
        }),
        f("routed p50 latency, µs", Lower, true, |r| {
            r.rate.as_ref().map(|x| x.p50_us)
        }),
        f("routed p99 latency, µs", Lower, true, |r| {
            r.rate.as_ref().map(|x| x.p99_us)
        }),
        f("proxy CPU µs / routed conn", Lower, false, |r| {
            r.rate.as_ref()?.cpu_us_per_conn
        }),
        f("unknown-SNI rejects/s", Higher, false, |r| {
            r.reject.as_ref().map(|x| x.per_s)
        }),
        f("proxy CPU µs / reject", Lower, false, |r| {
            r.reject.as_ref()?.cpu_us_per_close
        }),
        f("banned closes/s", Higher, false, |r| {
            r.banned.as_ref().map(|x| x.per_s)
        }),
        f("proxy CPU µs / banned close", Lower, false, |r| {
            r.banned.as_ref()?.cpu_us_per_close
        }),
        f("idle RSS KiB / conn", Lower, false, |r| {
            r.idle.as_ref().map(|x| x.kib_per_conn)
        }),
    ]
}

/// A peer as configured by default (the "best peer" of the main table).
fn is_peer(name: &str) -> bool {
    name != DIRECT && name != FLOOR && !name.starts_with(OURS) && !name.ends_with(DEFERRED)
}

/// A peer run with deferred accept.
fn is_deferred_peer(name: &str) -> bool {
    !name.starts_with(OURS) && name.ends_with(DEFERRED)
}

fn best(values: impl Iterator<Item = f64>, better: Better) -> Option<f64> {
    values.fold(None, |acc, v| match (acc, better) {
        (None, _) => Some(v),
        (Some(a), Better::Higher) => Some(a.max(v)),
        (Some(a), Better::Lower) => Some(a.min(v)),
    })
}

/// A figure with about three significant digits.
fn num(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

fn ratio(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "-".to_owned(),
    }
}

/// Every run of one target (several with `ROUNDS`); a figure is the median
/// over the runs that have it, so one disturbed round does not decide.
struct Row {
    name: String,
    runs: Vec<Results>,
}

impl Row {
    fn value(&self, figure: &Figure) -> Option<f64> {
        median(self.runs.iter().filter_map(|r| (figure.get)(r)).collect())
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The best value of `figure` among the rows `peer` picks.
fn best_of(rows: &[Row], figure: &Figure, peer: fn(&str) -> bool) -> Option<f64> {
    best(
        rows.iter()
            .filter(|r| peer(&r.name))
            .filter_map(|r| r.value(figure)),
        figure.better,
    )
}

/// The best default peer's value of `figure`.
fn best_peer(rows: &[Row], figure: &Figure) -> Option<f64> {
    best_of(rows, figure, is_peer)
}

fn row<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// Reads the result files and prints the tables.
pub fn print(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let results: Results = serde_json::from_str(&text)
            .with_context(|| format!("bad JSON in {}", file.display()))?;
        match rows.iter_mut().find(|r| r.name == results.name) {
            Some(row) => row.runs.push(results),
            None => rows.push(Row {
                name: results.name.clone(),
                runs: vec![results],
            }),
        }
    }
    let rounds = rows.iter().map(|r| r.runs.len()).max().unwrap_or(0);
    if rounds > 1 {
        println!("Each figure is the median of {rounds} rounds.\n");
    }
    println!("| figure | target | value | × best peer | × direct |");
    println!("|---|---|---:|---:|---:|");
    let figures = figures();
    for figure in &figures {
        let best_peer = best_peer(&rows, figure);
        let direct = row(&rows, DIRECT)
            .and_then(|r| r.value(figure))
            .filter(|_| figure.vs_direct);
        for row in &rows {
            let Some(value) = row.value(figure) else {
                continue;
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                figure.label,
                row.name,
                num(value),
                ratio(value, best_peer),
                ratio(value, direct)
            );
        }
    }
    for row in &rows {
        row.runs.iter().for_each(notes);
        noise(row);
    }
    print_targets(&rows, &figures, OURS, HAPROXY, is_peer);
    let ours_deferred = format!("{OURS}{DEFERRED}");
    if row(&rows, &ours_deferred).is_some() {
        println!("\nWith deferred accept on every side (TCP_DEFER_ACCEPT):");
        let haproxy_deferred = format!("{HAPROXY}{DEFERRED}");
        print_targets(
            &rows,
            &figures,
            &ours_deferred,
            &haproxy_deferred,
            is_deferred_peer,
        );
    }
    print_kernel(&rows, &figures);
    Ok(())
}

/// The kernel-bans row (`sniroute-kernel`): its figures against the issue's
/// targets, HAProxy's CPU per reject taken from the same run.
fn print_kernel(rows: &[Row], figures: &[Figure]) {
    let Some(kernel) = rows
        .iter()
        .flat_map(|r| r.runs.iter())
        .find_map(|run| run.kernel.as_ref())
    else {
        return;
    };
    let haproxy_reject = figures
        .iter()
        .find(|f| f.label == "proxy CPU µs / reject")
        .and_then(|f| row(rows, HAPROXY)?.value(f));
    println!(
        "\nKernel bans (`sniroute-kernel`: `firewall.backend = \"nftables\"`, {} banned sources, \
         all in the kernel {:.2} s after the first strike):\n",
        kernel.sources, kernel.ban_secs
    );
    println!("| figure | value | against | target | measured | met |");
    println!("|---|---:|---|---:|---:|---|");
    // /proc counts CPU in 10 ms ticks: zero ticks bound the figure by one.
    let tick_bound = 0.01 * 1e6 / kernel.attempts.max(1) as f64;
    if let (Some(ours), Some(theirs)) = (kernel.cpu_us_per_attempt, haproxy_reject) {
        let r = ours / theirs;
        println!(
            "| proxy CPU µs per banned attempt (one 10 ms tick would be {}) | {} | HAProxy's per reject ({}) | ≤ 0.05× | {r:.3}× | {} |",
            num(tick_bound),
            num(ours),
            num(theirs),
            if r <= 0.05 { "yes" } else { "**no**" }
        );
    } else if let Some(ours) = kernel.cpu_us_per_attempt {
        println!(
            "| proxy CPU µs per banned attempt | {} | (no HAProxy row) | | | |",
            num(ours)
        );
    }
    // The median of the alternating pairs' ratios (older results: one pair).
    let r = median(kernel.routed_ratios.clone())
        .unwrap_or(kernel.routed_flood_per_s / kernel.routed_quiet_per_s);
    let spread = match kernel.routed_ratios.as_slice() {
        [first, .., last] => format!(" (pairs {first:.2}–{last:.2})"),
        _ => String::new(),
    };
    println!(
        "| routed conns/s during the flood (median of alternating pairs) | {} | without it ({}) | ≥ 0.95× | {r:.2}×{spread} | {} |",
        num(kernel.routed_flood_per_s),
        num(kernel.routed_quiet_per_s),
        if r >= 0.95 { "yes" } else { "**no**" }
    );
    println!(
        "| banned attempts/s (SYNs dropped) | {} | answered: {} | 0 answered | | {} |",
        num(kernel.attempts_per_s),
        kernel.answered,
        if kernel.answered == 0 {
            "yes"
        } else {
            "**no**"
        }
    );
}

/// One line per target whose phases ran beside other busy processes: the
/// largest share of a core they took during any of its measured phases.
fn noise(row: &Row) {
    let mut worst: Option<(f64, &str)> = None;
    for run in &row.runs {
        let phases = [
            (
                "bulk, 1 conn",
                run.bulk1.as_ref().map(|b| (b.secs, &b.context)),
            ),
            (
                "bulk, 8 conns",
                run.bulk8.as_ref().map(|b| (b.secs, &b.context)),
            ),
            ("routed", run.rate.as_ref().map(|r| (r.secs, &r.context))),
            ("reject", run.reject.as_ref().map(|r| (r.secs, &r.context))),
            ("banned", run.banned.as_ref().map(|r| (r.secs, &r.context))),
        ];
        for (phase, measured) in phases {
            let Some((secs, context)) = measured else {
                continue;
            };
            let share = context.other_cpu_s / secs;
            if worst.is_none_or(|(w, _)| share > w) {
                worst = Some((share, phase));
            }
        }
    }
    if let Some((share, phase)) = worst.filter(|(share, _)| *share > NOISE_SHARE) {
        println!(
            "\n{}: noisy: other processes used up to {:.0}% of a core during its phases ({phase})",
            row.name,
            share * 100.0
        );
    }
}

/// Failures, failed connections and bytes sent to rejected clients.
fn notes(run: &Results) {
    for failure in &run.failed {
        println!("\n{}: FAILED {failure}", run.name);
    }
    let errors = [
        ("routed", run.rate.as_ref().map(|r| r.errors)),
        ("reject", run.reject.as_ref().map(|r| r.errors)),
        ("banned", run.banned.as_ref().map(|r| r.errors)),
    ];
    for (phase, count) in errors {
        if let Some(count) = count.filter(|&c| c > 0) {
            println!(
                "\n{}: {count} failed connections in the {phase} phase",
                run.name
            );
        }
    }
    if let Some(bytes) = run
        .reject
        .as_ref()
        .map(|r| r.bytes_received)
        .filter(|&b| b > 0)
    {
        println!("\n{}: sent {bytes} bytes to rejected clients", run.name);
    }
}

/// Issue 5's targets: (figure label, compared with, needed ratio).
const TARGETS: [(&str, &str, Better, f64); 10] = [
    (
        "bulk, 1 conn: GiB/s (both ways)",
        "best peer",
        Better::Higher,
        1.1,
    ),
    (
        "bulk, 8 conns: GiB/s (both ways)",
        "best peer",
        Better::Higher,
        1.1,
    ),
    (
        "bulk, 1 conn: proxy CPU s/GiB",
        "best peer",
        Better::Lower,
        1.0,
    ),
    (
        "bulk, 8 conns: proxy CPU s/GiB",
        "best peer",
        Better::Lower,
        1.0,
    ),
    ("routed conns/s", "best peer", Better::Higher, 1.1),
    ("routed p99 latency, µs", "best peer", Better::Lower, 1.0),
    (
        "proxy CPU µs / routed conn",
        "best peer",
        Better::Lower,
        0.9,
    ),
    ("unknown-SNI rejects/s", HAPROXY, Better::Higher, 1.3),
    ("proxy CPU µs / reject", HAPROXY, Better::Lower, 0.8),
    ("idle RSS KiB / conn", HAPROXY, Better::Lower, 1.0),
];

/// Issue 5's targets for row `ours`, against `haproxy` where a target names
/// it and against the best of the rows `peer` picks otherwise.
fn print_targets(
    rows: &[Row],
    figures: &[Figure],
    ours: &str,
    haproxy: &str,
    peer: fn(&str) -> bool,
) {
    let Some(ours) = row(rows, ours) else {
        return;
    };
    println!(
        "\n| target (issue 5) | {} | vs | needed | measured | met |",
        ours.name
    );
    println!("|---|---:|---|---:|---:|---|");
    for (label, against, better, needed) in TARGETS {
        let Some(figure) = figures.iter().find(|f| f.label == label) else {
            continue;
        };
        let Some(value) = ours.value(figure) else {
            continue;
        };
        let (against, base) = if against == HAPROXY {
            (haproxy, row(rows, haproxy).and_then(|r| r.value(figure)))
        } else {
            (against, best_of(rows, figure, peer))
        };
        let Some(base) = base.filter(|&b| b > 0.0) else {
            continue;
        };
        let measured = value / base;
        let (sign, met) = match better {
            Better::Higher => ("≥", measured >= needed),
            Better::Lower => ("≤", measured <= needed),
        };
        println!(
            "| {label} | {} | {against} ({}) | {sign} {needed:.2}× | {measured:.2}× | {} |",
            num(value),
            num(base),
            if met { "yes" } else { "**no**" }
        );
    }
    let per_close = |label: &str| {
        let figure = figures.iter().find(|f| f.label == label)?;
        ours.value(figure)
    };
    let reject = per_close("proxy CPU µs / reject");
    let banned = per_close("proxy CPU µs / banned close");
    if let (Some(reject), Some(banned)) = (reject, banned) {
        println!(
            "| banned close cheaper than a reject | {} | own reject ({}) | < 1.00× | {:.2}× | {} |",
            num(banned),
            num(reject),
            banned / reject,
            if banned < reject { "yes" } else { "**no**" }
        );
    }
}
