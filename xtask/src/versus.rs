//! `cargo xtask versus`: the project beside the peers of `../shared/peers`, interleaved in
//! short runs, cycle after cycle, and read as ratios of the same cycle (BENCHMARKS.md, issue
//! 11).
//!
//! On this shared machine a run's figure swings by a fifth to a quarter between runs seconds
//! apart, ours and the peers' alike, more than most differences being measured; one round of
//! `side_by_side.sh` puts minutes between a peer's run and ours. Here every cycle runs, for
//! each K, the naive tokio-tungstenite peer, the socketioxide peer and `e2e_roundtrip`
//! (in process, then over HTTP/1.1 and over HTTP/2) back to back for a few seconds each,
//! with the servers pinned to CPU 0 and the clients to CPU 1 as `run.sh` pins them; each
//! cycle's ratios use that cycle's best peer, and the summary gives the range and median of
//! the ratios and how many cycles met each of issue 11's targets.
//!
//! `--e2e A --e2e B` runs two (or more) builds of `e2e_roundtrip` after the same peer runs
//! of each cycle, with a summary each: an A/B of a change, with the peers in the same
//! minutes. `--thousand` adds 1,000 bridges of one device each (K=16, in process) to every
//! cycle, against the same cycle's one bridge.
//!
//! The peers are built from `../shared/peers` (copied into `--peers`, default
//! `/tmp/bridge-peers`, as `side_by_side.sh` does) when their binaries are missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The flags' help, shown by `cargo xtask`.
pub(crate) const HELP: &str = "[--cycles N] [--secs S] [--k 1,16,256] [--thousand] [--peers DIR] [--e2e BINARY]...: the peers and e2e_roundtrip interleaved, ratios per cycle against issue 11's targets";

/// What to run.
#[derive(Debug, Clone, PartialEq)]
struct Versus {
    cycles: u32,
    /// Measured seconds of each run.
    secs: u32,
    ks: Vec<u32>,
    /// Also run 1,000 bridges of one device each at K=16 (in process) every cycle.
    thousand: bool,
    /// Where the peers are copied and built.
    peers: PathBuf,
    /// The `e2e_roundtrip` binaries to run, each after the peers of every K and cycle
    /// (several to compare builds in the same cycles); none: the workspace's release build.
    e2e: Vec<PathBuf>,
}

impl Default for Versus {
    fn default() -> Self {
        Self {
            cycles: 3,
            secs: 4,
            ks: vec![1, 16, 256],
            thousand: false,
            peers: PathBuf::from(
                std::env::var_os("PEERS_WORK").unwrap_or_else(|| "/tmp/bridge-peers".into()),
            ),
            e2e: Vec::new(),
        }
    }
}

impl Versus {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut versus = Self::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if flag == "--thousand" {
                versus.thousand = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--cycles" => versus.cycles = positive(flag, value)?,
                "--secs" => versus.secs = positive(flag, value)?,
                "--k" => {
                    versus.ks = value
                        .split(',')
                        .map(|k| positive(flag, k))
                        .collect::<Result<_, _>>()?;
                }
                "--peers" => versus.peers = PathBuf::from(value),
                "--e2e" => versus.e2e.push(PathBuf::from(value)),
                _ => return Err(format!("unknown flag: {flag} {value}\n  {HELP}")),
            }
        }
        Ok(versus)
    }
}

fn positive(flag: &str, value: &str) -> Result<u32, String> {
    match value.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: `{value}` is not a positive number")),
    }
}

/// One run's figures: round trips per second (for the project, per server core), p50 and
/// p99 in µs, and (the project only) server CPU µs per command.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_per_command: Option<f64>,
}

/// A peer's `RESULT {json}` line: its round trips per second, p50 and p99; `None` when the
/// run failed (`errors` above zero or an `error`).
fn peer_result(line: &str) -> Option<Figures> {
    let json: serde_json::Value = serde_json::from_str(line.strip_prefix("RESULT ")?).ok()?;
    if json.get("errors").and_then(serde_json::Value::as_u64) != Some(0)
        || json.get("error").is_some_and(|e| !e.is_null())
    {
        return None;
    }
    let number = |name: &str| json.get(name).and_then(serde_json::Value::as_f64);
    Some(Figures {
        rate: number("rps")?,
        p50: number("p50_us")?,
        p99: number("p99_us")?,
        cpu_per_command: None,
    })
}

/// A row of `e2e_roundtrip`'s table (`| driver | phones | bridges | K | round trips/s | p50
/// | p99 | server CPU µs/cmd | per-core capacity/s | …`): the driver, bridges, K and the
/// figures, with the per-core capacity as the rate. `None` for other lines, and for a row
/// with failures.
fn project_row(line: &str) -> Option<(String, u32, u32, Figures)> {
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    // A leading empty cell before the first `|`.
    let [
        _,
        driver,
        _,
        bridges,
        k,
        _,
        p50,
        p99,
        cpu,
        per_core,
        _,
        _,
        failures,
        ..,
    ] = cells.as_slice()
    else {
        return None;
    };
    if !["inproc", "http", "http2"].contains(driver) || *failures != "0" {
        return None;
    }
    Some((
        (*driver).to_owned(),
        bridges.parse().ok()?,
        k.parse().ok()?,
        Figures {
            rate: per_core.parse().ok()?,
            p50: p50.parse().ok()?,
            p99: p99.parse().ok()?,
            cpu_per_command: Some(cpu.parse().ok()?),
        },
    ))
}

/// One cycle's figures for one K.
#[derive(Debug, Default, Clone, PartialEq)]
struct Cycle {
    ws: Option<Figures>,
    sio: Option<Figures>,
    inproc: Option<Figures>,
    http: Option<Figures>,
    /// Over HTTP/2: one connection, K streams.
    http2: Option<Figures>,
}

impl Cycle {
    /// The best peer's throughput and latencies of this cycle (each the best of the two).
    fn best_peer(&self) -> Option<Figures> {
        let peers: Vec<Figures> = [self.ws, self.sio].into_iter().flatten().collect();
        let best = |pick: fn(&Figures) -> f64, better: fn(f64, f64) -> f64| {
            peers.iter().map(pick).reduce(better)
        };
        Some(Figures {
            rate: best(|f| f.rate, f64::max)?,
            p50: best(|f| f.p50, f64::min)?,
            p99: best(|f| f.p99, f64::min)?,
            cpu_per_command: None,
        })
    }
}

/// Range and median of `values` (not empty), as `a–b (median m)`.
fn spread(values: &[f64], format: fn(f64) -> String) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[middle - 1], sorted[middle])
    } else {
        sorted[middle]
    };
    format!(
        "{}–{} (median {})",
        format(sorted[0]),
        format(sorted[sorted.len() - 1]),
        format(median)
    )
}

/// A target of the summary: its text, which of our figures (in process or HTTP), which
/// figure (a rate or a latency), and the bound of the ratio ours / best peer.
type Target = (
    &'static str,
    fn(&Cycle) -> Option<Figures>,
    fn(&Figures) -> f64,
    f64,
);

/// The summary's lines: for each K and target, the ratios of every cycle against that
/// cycle's best peer, and how many cycles met the target.
fn summary(ks: &[u32], cycles: &[Vec<Cycle>], thousand: &[(f64, f64)]) -> Vec<String> {
    let micros = |x: f64| format!("{x:.1}");
    let thousands = |x: f64| format!("{:.1}k", x / 1000.0);
    let mut lines = vec![
        "| target | cycles | ours | best peer | ratio per cycle | met in |".to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    for (index, &k) in ks.iter().enumerate() {
        let of_k: Vec<&Cycle> = cycles.iter().map(|cycle| &cycle[index]).collect();
        // Ours and the best peer's figure, for the cycles that have both.
        let columns = |ours: fn(&Cycle) -> Option<Figures>, figure: fn(&Figures) -> f64| {
            of_k.iter()
                .filter_map(|cycle| Some((figure(&ours(cycle)?), figure(&cycle.best_peer()?))))
                .unzip::<f64, f64, Vec<f64>, Vec<f64>>()
        };
        let targets: &[Target] = if k == 1 {
            &[
                (
                    "in process, K=1: p50 at or below the best peer's (µs)",
                    |c| c.inproc,
                    |f| f.p50,
                    1.0,
                ),
                (
                    "in process, K=1: p99 at or below the best peer's (µs)",
                    |c| c.inproc,
                    |f| f.p99,
                    1.0,
                ),
            ]
        } else {
            &[
                (
                    "in process: ≥ 1.5× the best peer (per server core, /s)",
                    |c| c.inproc,
                    |f| f.rate,
                    1.5,
                ),
                (
                    "HTTP: ≥ 0.6× the best peer (per server core, /s)",
                    |c| c.http,
                    |f| f.rate,
                    0.6,
                ),
                (
                    "HTTP/2, one connection: ≥ 0.6× the best peer (per server core, /s)",
                    |c| c.http2,
                    |f| f.rate,
                    0.6,
                ),
            ]
        };
        for &(target, ours, figure, bound) in targets {
            let (ours, best) = columns(ours, figure);
            if ours.is_empty() {
                continue;
            }
            lines.push(if k == 1 {
                line(target, &ours, &best, |ratio| ratio <= bound, micros)
            } else {
                line(
                    &format!("K={k}, {target}"),
                    &ours,
                    &best,
                    |ratio| ratio >= bound,
                    thousands,
                )
            });
        }
    }
    if !thousand.is_empty() {
        let (many, one): (Vec<f64>, Vec<f64>) = thousand.iter().copied().unzip();
        lines.push(line(
            "1,000 bridges, K=16: server CPU per command ≤ 1.5× one bridge's (µs; the peer column is one bridge)",
            &many,
            &one,
            |ratio| ratio <= 1.5,
            |x| format!("{x:.2}"),
        ));
    }
    lines
}

/// One line of the summary: `ours` against `theirs` cycle by cycle (the ratio ours /
/// theirs), and how many cycles' ratios `meet` the target.
fn line(
    target: &str,
    ours: &[f64],
    theirs: &[f64],
    meets: impl Fn(f64) -> bool,
    unit: fn(f64) -> String,
) -> String {
    let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(o, t)| o / t).collect();
    let met = ratios.iter().filter(|ratio| meets(**ratio)).count();
    format!(
        "| {target} | {} | {} | {} | {} | {met} of {} |",
        ratios.len(),
        spread(ours, unit),
        spread(theirs, unit),
        spread(&ratios, |x| format!("{x:.2}×")),
        ratios.len()
    )
}

/// Runs the task.
pub(crate) fn versus(root: &Path, cargo: &str, args: &[String]) -> Result<(), String> {
    let versus = Versus::parse(args)?;
    if Command::new("taskset").arg("-V").output().is_err() {
        return Err("`taskset` not found (util-linux): the runs pin servers and clients".into());
    }
    let peers = build_peers(root, &versus.peers, cargo)?;
    let binaries = if versus.e2e.is_empty() {
        vec![crate::build_e2e_roundtrip(cargo)?]
    } else {
        versus.e2e.clone()
    };
    if let Some(missing) = binaries.iter().find(|binary| !binary.is_file()) {
        return Err(format!("--e2e {}: no such file", missing.display()));
    }
    println!(
        "\n# versus, {} cycles of {} s runs, started at load average {}",
        versus.cycles,
        versus.secs,
        load_average()
    );
    // Per binary: its cycles (each a `Cycle` per K) and its 1,000-bridge figures.
    let mut cycles: Vec<Vec<Vec<Cycle>>> = vec![Vec::new(); binaries.len()];
    let mut thousand: Vec<Vec<(f64, f64)>> = vec![Vec::new(); binaries.len()];
    for cycle in 1..=versus.cycles {
        println!("\n## cycle {cycle} (load average {})", load_average());
        let mut of_cycle: Vec<Vec<Cycle>> = vec![Vec::new(); binaries.len()];
        for &k in &versus.ks {
            let ws = peer(&peers, Peer::Ws, k, versus.secs);
            let sio = peer(&peers, Peer::Sio, k, versus.secs);
            for (index, e2e) in binaries.iter().enumerate() {
                let figures = Cycle {
                    ws,
                    sio,
                    inproc: project(e2e, "inproc", 1, k, versus.secs),
                    http: (k > 1)
                        .then(|| project(e2e, "http", 1, k, versus.secs))
                        .flatten(),
                    http2: (k > 1)
                        .then(|| project(e2e, "http2", 1, k, versus.secs))
                        .flatten(),
                };
                print_cycle(&label(&binaries, index), k, &figures);
                of_cycle[index].push(figures);
            }
        }
        for (index, e2e) in binaries.iter().enumerate() {
            if versus.thousand {
                let many = project(e2e, "inproc", 1000, 16, versus.secs);
                let one = of_cycle[index]
                    .iter()
                    .zip(&versus.ks)
                    .find(|(_, k)| **k == 16)
                    .and_then(|(figures, _)| figures.inproc)
                    .or_else(|| project(e2e, "inproc", 1, 16, versus.secs));
                let per_command =
                    |figures: Option<Figures>| figures.and_then(|f| f.cpu_per_command);
                if let (Some(many), Some(one)) = (per_command(many), per_command(one)) {
                    println!(
                        "  {}1,000 bridges K=16: {many:.2} µs/cmd against {one:.2} (1 bridge): {:.2}×",
                        label(&binaries, index),
                        many / one
                    );
                    thousand[index].push((many, one));
                }
            }
        }
        for (index, of_binary) in of_cycle.into_iter().enumerate() {
            cycles[index].push(of_binary);
        }
    }
    println!(
        "\n# summary (ended at load average {}; ours per server core, peers per wall second)",
        load_average()
    );
    for (index, e2e) in binaries.iter().enumerate() {
        println!("\n{}\n", e2e.display());
        for line in summary(&versus.ks, &cycles[index], &thousand[index]) {
            println!("{line}");
        }
    }
    Ok(())
}

/// How a binary's lines start: nothing with one binary, its number among several.
fn label(binaries: &[PathBuf], index: usize) -> String {
    if binaries.len() == 1 {
        String::new()
    } else {
        format!("[{}] ", index + 1)
    }
}

fn print_cycle(label: &str, k: u32, cycle: &Cycle) {
    let show = |name: &str, figures: Option<Figures>| match figures {
        Some(f) => format!("{name} {:.0}/s p50 {:.1} p99 {:.1}", f.rate, f.p50, f.p99),
        None => format!("{name} failed"),
    };
    let mut parts = vec![
        show("ws", cycle.ws),
        show("sio", cycle.sio),
        show("inproc", cycle.inproc),
    ];
    if k > 1 {
        parts.push(show("http", cycle.http));
        parts.push(show("http2", cycle.http2));
    }
    println!("  {label}K={k}: {}", parts.join(" | "));
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// The peers' release binaries, built from `../shared/peers` when missing.
fn build_peers(root: &Path, work: &Path, cargo: &str) -> Result<PathBuf, String> {
    let binaries = work.join("rust/target/release");
    let wanted = ["ws_server", "ws_client", "sio_server", "sio_client"];
    if wanted.iter().all(|name| binaries.join(name).is_file()) {
        return Ok(binaries);
    }
    let source = root
        .parent()
        .map(|parent| parent.join("shared/peers"))
        .filter(|source| source.is_dir())
        .ok_or("the peers' binaries are missing and ../shared/peers is not there to build them")?;
    copy_tree(&source, work)?;
    let status = Command::new(cargo)
        .args(["build", "--release"])
        .current_dir(work.join("rust"))
        .status()
        .map_err(|e| format!("building the peers: {e}"))?;
    if !status.success() {
        return Err(format!("building the peers failed ({status})"));
    }
    Ok(binaries)
}

/// Copies `from` into `to`, as `side_by_side.sh` does: without `target`, `node_modules` or
/// `results`, and writable (the shared copy is read-only).
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let (source, target) = (entry.path(), to.join(&name));
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        if kind.is_dir() {
            if !["target", "node_modules", "results"].contains(&name.to_string_lossy().as_ref()) {
                copy_tree(&source, &target)?;
            }
        } else if kind.is_file() {
            std::fs::copy(&source, &target).map_err(|e| format!("{}: {e}", source.display()))?;
            let mut permissions = std::fs::metadata(&target)
                .map_err(|e| e.to_string())?
                .permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(&target, permissions).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Peer {
    Ws,
    Sio,
}

/// A child killed when dropped: a run that goes wrong leaves nothing behind.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// One run of a peer at K in flight for `secs`; `None` (with a message) when it failed.
fn peer(binaries: &Path, peer: Peer, k: u32, secs: u32) -> Option<Figures> {
    let (server_name, client_name, port, client_kind, url) = match peer {
        Peer::Ws => (
            "ws_server",
            "ws_client",
            19003,
            "rust",
            "ws://127.0.0.1:19003/ws?deviceId=lock-1".to_owned(),
        ),
        Peer::Sio => (
            "sio_server",
            "sio_client",
            19001,
            "rust-raw",
            "ws://127.0.0.1:19001/socket.io/?EIO=4&transport=websocket".to_owned(),
        ),
    };
    let result = (|| -> Result<Figures, String> {
        let watchdog = format!("watchdog={}", secs + 60);
        let mut server = Owned(
            Command::new("taskset")
                .args(["-c", "0"])
                .arg(binaries.join(server_name))
                .args([
                    format!("port={port}"),
                    format!("k={k}"),
                    format!("client={client_kind}"),
                    // Bounded by `secs`: the count is out of reach.
                    "count=1000000000".into(),
                    format!("secs={secs}"),
                    "warmup=3000".into(),
                    watchdog.clone(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{server_name}: {e}"))?,
        );
        let mut lines = BufReader::new(server.0.stdout.take().ok_or("no stdout")?).lines();
        if !lines
            .by_ref()
            .any(|line| line.is_ok_and(|l| l.starts_with("LISTENING")))
        {
            return Err(format!("{server_name} did not start"));
        }
        let _client = Owned(
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(binaries.join(client_name))
                .args([format!("url={url}"), watchdog])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{client_name}: {e}"))?,
        );
        // The server prints its result and exits after warm-up plus `secs`; its watchdog
        // bounds a run that hangs.
        for line in lines {
            let line = line.map_err(|e| e.to_string())?;
            if line.starts_with("RESULT") {
                return peer_result(&line).ok_or_else(|| format!("failed run: {line}"));
            }
        }
        Err(format!("{server_name} ended without a result"))
    })();
    result
        .map_err(|error| eprintln!("  {peer:?} K={k}: {error}"))
        .ok()
}

/// One run of `e2e_roundtrip` (it pins its own children); `None` (with a message) when it
/// failed.
fn project(e2e: &Path, driver: &str, bridges: u32, k: u32, secs: u32) -> Option<Figures> {
    let output = Command::new(e2e)
        .args([
            "--only",
            driver,
            "--bridges",
            &bridges.to_string(),
            "--k",
            &k.to_string(),
            "--secs",
            &secs.to_string(),
        ])
        .stderr(Stdio::null())
        .output();
    let row = output.ok().and_then(|output| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(project_row)
    });
    if let Some((_, _, _, figures)) = row {
        return Some(figures);
    }
    eprintln!("  e2e_roundtrip --only {driver} --bridges {bridges} --k {k}: no result");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_set_what_they_name_and_the_rest_keeps_its_default() {
        let versus = Versus::parse(&args(
            "--cycles 5 --k 16,256 --thousand --peers /x --e2e /a/e2e --e2e /b/e2e",
        ))
        .unwrap();
        assert_eq!(versus.cycles, 5);
        assert_eq!(versus.secs, Versus::default().secs);
        assert_eq!(versus.ks, vec![16, 256]);
        assert!(versus.thousand);
        assert_eq!(versus.peers, PathBuf::from("/x"));
        assert_eq!(
            versus.e2e,
            vec![PathBuf::from("/a/e2e"), PathBuf::from("/b/e2e")]
        );
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        for (line, named) in [
            ("--cycles 0", "--cycles"),
            ("--k 16,x", "--k"),
            ("--secs", "--secs"),
            ("--loud 1", "--loud"),
        ] {
            let error = Versus::parse(&args(line)).unwrap_err();
            assert!(error.contains(named), "{line}: {error}");
        }
    }

    #[test]
    fn a_peer_result_gives_its_rate_and_latencies_unless_it_failed() {
        let ok = r#"RESULT {"peer":"ws","client":"rust","k":16,"done":500000,"errors":0,"secs":5.000,"rps":100000,"p50_us":150.5,"p99_us":300.0,"rss_kb":1,"hwm_kb":1,"cpu":{},"error":null}"#;
        assert_eq!(
            peer_result(ok),
            Some(Figures {
                rate: 100_000.0,
                p50: 150.5,
                p99: 300.0,
                cpu_per_command: None
            })
        );
        assert_eq!(
            peer_result(&ok.replace(r#""errors":0"#, r#""errors":1"#)),
            None
        );
        assert_eq!(
            peer_result(&ok.replace(r#""error":null"#, r#""error":"emit""#)),
            None
        );
        assert_eq!(peer_result("LISTENING 19003"), None);
    }

    #[test]
    fn a_project_row_gives_the_per_core_rate_and_its_cpu_per_command() {
        let row = "| http   | ws   |     1 |  16 |     56531 |    267.6 |    516.1 |  17.15 |     58294 |   97% |   85% |   0 | 1.59 1.45 0.78 |";
        let (driver, bridges, k, figures) = project_row(row).unwrap();
        assert_eq!((driver.as_str(), bridges, k), ("http", 1, 16));
        let (driver, ..) = project_row(&row.replace("| http   |", "| http2  |")).unwrap();
        assert_eq!(driver, "http2");
        assert_eq!(project_row(&row.replace("| http   |", "| grpc   |")), None);
        assert_eq!(
            figures,
            Figures {
                rate: 58_294.0,
                p50: 267.6,
                p99: 516.1,
                cpu_per_command: Some(17.15)
            }
        );
        assert_eq!(project_row(&row.replace("|   0 |", "|   3 |")), None);
        assert_eq!(
            project_row("| driver | phones | bridges | K | round trips/s |"),
            None
        );
    }

    #[allow(clippy::unnecessary_wraps)] // a cycle's fields are options
    fn figures(rate: f64, p50: f64, p99: f64) -> Option<Figures> {
        Some(Figures {
            rate,
            p50,
            p99,
            cpu_per_command: None,
        })
    }

    #[test]
    fn the_best_peer_is_the_best_of_each_figure_and_a_failed_peer_is_left_out() {
        let cycle = Cycle {
            ws: figures(100.0, 80.0, 150.0),
            sio: figures(90.0, 70.0, 200.0),
            ..Cycle::default()
        };
        assert_eq!(cycle.best_peer(), figures(100.0, 70.0, 150.0));
        let one = Cycle { sio: None, ..cycle };
        assert_eq!(one.best_peer(), figures(100.0, 80.0, 150.0));
        assert_eq!(Cycle::default().best_peer(), None);
    }

    #[test]
    fn the_summary_counts_the_cycles_that_met_each_target_against_their_own_best_peer() {
        let cycle = |ours: f64, http: f64, peer: f64| Cycle {
            ws: figures(peer, 60.0, 90.0),
            sio: figures(peer / 2.0, 50.0, 100.0),
            inproc: figures(ours, 55.0, 95.0),
            http: figures(http, 0.0, 0.0),
            http2: figures(http * 2.0, 0.0, 0.0),
        };
        // Cycle 1: 1.6× and 0.65×; cycle 2: 1.4× and 0.55× (a slower peer does not lift
        // cycle 1's ratio in cycle 2).
        let cycles = vec![
            vec![cycle(160.0, 65.0, 100.0)],
            vec![cycle(168.0, 66.0, 120.0)],
        ];
        let lines = summary(&[16], &cycles, &[(10.0, 4.0)]);
        let inproc = lines.iter().find(|l| l.contains("in process")).unwrap();
        assert!(inproc.contains("1.40×–1.60×"), "{inproc}");
        assert!(inproc.ends_with("| 1 of 2 |"), "{inproc}");
        let http = lines.iter().find(|l| l.contains("HTTP:")).unwrap();
        assert!(http.contains("0.55×–0.65×"), "{http}");
        assert!(http.ends_with("| 1 of 2 |"), "{http}");
        let http2 = lines.iter().find(|l| l.contains("HTTP/2")).unwrap();
        assert!(http2.contains("1.10×–1.30×"), "{http2}");
        assert!(http2.ends_with("| 2 of 2 |"), "{http2}");
        let thousand = lines.iter().find(|l| l.contains("1,000")).unwrap();
        assert!(thousand.contains("2.50×"), "{thousand}");
        assert!(thousand.ends_with("| 0 of 1 |"), "{thousand}");
    }

    #[test]
    fn at_k_1_the_summary_compares_latencies_with_the_lowest_of_the_peers() {
        let cycles = vec![vec![Cycle {
            ws: figures(1.0, 60.0, 90.0),
            sio: figures(1.0, 50.0, 100.0),
            inproc: figures(1.0, 55.0, 95.0),
            http: None,
            http2: None,
        }]];
        let lines = summary(&[1], &cycles, &[]);
        let p50 = lines.iter().find(|l| l.contains("p50")).unwrap();
        assert!(p50.ends_with("| 0 of 1 |"), "55 against 50: {p50}");
        let p99 = lines.iter().find(|l| l.contains("p99")).unwrap();
        assert!(p99.ends_with("| 0 of 1 |"), "95 against 90: {p99}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let plain = |x: f64| format!("{x}");
        assert_eq!(spread(&[4.0, 1.0, 3.0, 2.0], plain), "1–4 (median 2.5)");
        assert_eq!(spread(&[2.0], plain), "2–2 (median 2)");
    }
}
