//! `cargo xtask counts`: instructions per command of the end-to-end path, counted by
//! callgrind, which counts the same on a busy machine as on a quiet one (BENCHMARKS.md,
//! "counts per command").
//!
//! `e2e_roundtrip` is run twice for a fixed number of commands (`E2E_COMMANDS`), once with
//! fewer and once with more, with the server process (or, with `--who load`, the phones'
//! process) under callgrind through `E2E_SERVER_WRAPPER` / `E2E_LOAD_WRAPPER`. Per command
//! is the difference of the two totals over the difference of the counts, so that start-up,
//! connection set-up and warm-up cancel out. One thing does not cancel out:
//! `quanta::Clock::new` calibrates the clock for as long as wall time lets it (under
//! callgrind, a varying share of the run), so its inclusive cost is taken off each total.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to count: the scenario of `e2e_roundtrip` and whose instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    /// `server` or `load` (the phones, and the HTTP client with `--only http`).
    who: String,
    /// `inproc` or `http`.
    only: String,
    bridges: u32,
    k: u32,
    /// The two fixed counts of commands, fewer first.
    commands: (u64, u64),
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            who: "server".into(),
            only: "inproc".into(),
            bridges: 1,
            k: 16,
            commands: (2_000, 12_000),
        }
    }
}

/// The flags' help, shown by `cargo xtask`.
pub(crate) const HELP: &str = "[--who server|load] [--only inproc|http|http2] [--bridges N] [--k K] [--commands A,B]: instructions per command under callgrind (needs valgrind)";

impl Counts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut counts = Self::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--who" if value == "server" || value == "load" => counts.who.clone_from(value),
                "--only" if ["inproc", "http", "http2"].contains(&value.as_str()) => {
                    counts.only.clone_from(value);
                }
                "--bridges" => counts.bridges = number(flag, value)?,
                "--k" => counts.k = number(flag, value)?,
                "--commands" => {
                    let (fewer, more) = value
                        .split_once(',')
                        .ok_or_else(|| format!("--commands takes two counts, A,B; got {value}"))?;
                    counts.commands = (number(flag, fewer)?, number(flag, more)?);
                    if counts.commands.0 >= counts.commands.1 {
                        return Err(format!("--commands {value}: the first must be the smaller"));
                    }
                }
                _ => return Err(format!("unknown flag or value: {flag} {value}\n  {HELP}")),
            }
        }
        Ok(counts)
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a number"))
}

/// Runs the task.
pub(crate) fn counts(root: &Path, cargo: &str, args: &[String]) -> Result<(), String> {
    let counts = Counts::parse(args)?;
    for tool in ["valgrind", "callgrind_annotate"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("`{tool}` not found: install valgrind"));
        }
    }
    let binary = crate::build_e2e_roundtrip(cargo)?;
    let out = root.join("target/xtask-counts");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let fewer = one_run(&binary, &out, &counts, counts.commands.0)?;
    let more = one_run(&binary, &out, &counts, counts.commands.1)?;
    let per_command = more.per_command_after(&fewer, counts.commands.1 - counts.commands.0);
    println!(
        "\n{} instructions per command ({} process; --only {} --bridges {} --k {}; difference of {} and {} commands, without quanta::Clock::new's calibration)",
        per_command.round(),
        counts.who,
        counts.only,
        counts.bridges,
        counts.k,
        counts.commands.0,
        counts.commands.1
    );
    println!("profiles: {}", out.display());
    Ok(())
}

/// One fixed-count run under callgrind; its totals.
fn one_run(binary: &Path, out: &Path, counts: &Counts, commands: u64) -> Result<Totals, String> {
    let prefix = format!(
        "{}.{}.{}.{}.{commands}",
        counts.who, counts.only, counts.bridges, counts.k
    );
    // Files of an earlier run of the same scenario would be read as this one's.
    for entry in std::fs::read_dir(out).map_err(|e| format!("{}: {e}", out.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if profile_of(&path, &prefix) {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let wrapper = format!(
        "valgrind --tool=callgrind --callgrind-out-file={}/{prefix}.%p",
        out.display()
    );
    let wrapper_variable = if counts.who == "server" {
        "E2E_SERVER_WRAPPER"
    } else {
        "E2E_LOAD_WRAPPER"
    };
    let (bridges, k) = (counts.bridges.to_string(), counts.k.to_string());
    crate::run(
        &format!("{commands} commands under callgrind"),
        &binary.display().to_string(),
        &[
            "--only",
            &counts.only,
            "--bridges",
            &bridges,
            "--k",
            &k,
            "--secs",
            "900",
        ],
        &[
            ("E2E_COMMANDS", &commands.to_string()),
            (wrapper_variable, &wrapper),
        ],
    )?;
    let profile: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| profile_of(path, &prefix))
        .collect();
    let [profile] = profile.as_slice() else {
        return Err(format!(
            "expected one callgrind profile {prefix}.<pid> in {}, found {}",
            out.display(),
            profile.len()
        ));
    };
    let annotated = Command::new("callgrind_annotate")
        .args(["--tree=none", "--auto=no", "--inclusive=yes"])
        .arg(profile)
        .output()
        .map_err(|e| format!("callgrind_annotate: {e}"))?;
    if !annotated.status.success() {
        return Err(format!(
            "callgrind_annotate failed on {}",
            profile.display()
        ));
    }
    Totals::read(&String::from_utf8_lossy(&annotated.stdout)).ok_or_else(|| {
        format!(
            "no PROGRAM TOTALS in the annotation of {}",
            profile.display()
        )
    })
}

/// Whether `path` is a callgrind profile of the run `prefix` names (`prefix.<pid>`).
fn profile_of(path: &Path, prefix: &str) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix(prefix))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// What one run's annotation says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Totals {
    /// The whole run's instructions.
    program: u64,
    /// `quanta::Clock::new`'s, inclusive (0 when the run made no such clock).
    clock_calibration: u64,
}

impl Totals {
    /// Reads `callgrind_annotate --inclusive=yes` output: the `PROGRAM TOTALS` line and the
    /// first (largest) line naming `quanta::Clock::new`.
    fn read(annotation: &str) -> Option<Self> {
        let leading_count = |line: &str| -> Option<u64> {
            line.split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()
        };
        let program = annotation
            .lines()
            .find(|line| line.contains("PROGRAM TOTALS"))
            .and_then(leading_count)?;
        let clock_calibration = annotation
            .lines()
            .find(|line| line.contains("quanta::Clock::new"))
            .and_then(leading_count)
            .unwrap_or(0);
        Some(Self {
            program,
            clock_calibration,
        })
    }

    /// Instructions per command between `fewer` (a run of fewer commands) and this run,
    /// `commands` more.
    #[allow(clippy::cast_precision_loss)] // instruction totals far below 2^52
    fn per_command_after(self, fewer: &Self, commands: u64) -> f64 {
        let without_calibration = |t: &Self| t.program.saturating_sub(t.clock_calibration) as f64;
        (without_calibration(&self) - without_calibration(fewer)) / commands as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_name_the_scenario_and_default_to_the_server_at_k16() {
        assert_eq!(Counts::parse(&[]).unwrap(), Counts::default());
        let counts = Counts::parse(&args(&[
            "--who",
            "load",
            "--only",
            "http",
            "--bridges",
            "1000",
            "--k",
            "256",
            "--commands",
            "100,900",
        ]))
        .unwrap();
        assert_eq!(
            counts,
            Counts {
                who: "load".into(),
                only: "http".into(),
                bridges: 1000,
                k: 256,
                commands: (100, 900),
            }
        );
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        for (list, says) in [
            (&["--who", "phone"][..], "unknown flag"),
            (&["--k"][..], "needs a value"),
            (&["--k", "many"][..], "not a number"),
            (&["--commands", "900"][..], "two counts"),
            (
                &["--commands", "900,100"][..],
                "the first must be the smaller",
            ),
            (&["--secs", "5"][..], "unknown flag"),
        ] {
            let error = Counts::parse(&args(list)).unwrap_err();
            assert!(error.contains(says), "{list:?}: {error}");
        }
    }

    /// The shape of `callgrind_annotate --tree=none --auto=no --inclusive=yes` output.
    const ANNOTATION: &str = "\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
254,811,734 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
254,811,734 (100.0%)  ???:_start [/work/target/release/e2e_roundtrip]
 31,002,118 (12.17%)  /root/.cargo/registry/src/quanta-0.12.6/src/lib.rs:quanta::Clock::new [/work/target/release/e2e_roundtrip]
     12,004 ( 0.00%)  /root/.cargo/registry/src/quanta-0.12.6/src/lib.rs:quanta::Clock::new::{{closure}} [/work/target/release/e2e_roundtrip]
";

    #[test]
    fn an_annotation_gives_the_program_total_and_the_clock_calibration() {
        assert_eq!(
            Totals::read(ANNOTATION),
            Some(Totals {
                program: 254_811_734,
                clock_calibration: 31_002_118,
            })
        );
        let without_clock = ANNOTATION
            .lines()
            .filter(|line| !line.contains("quanta"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            Totals::read(&without_clock).map(|t| t.clock_calibration),
            Some(0)
        );
        assert_eq!(Totals::read("no totals here"), None);
    }

    #[test]
    fn per_command_is_the_difference_without_each_runs_calibration() {
        let fewer = Totals {
            program: 100_000_000,
            clock_calibration: 30_000_000,
        };
        // 10,000 more commands at 17,000 each, and a calibration 5,000,000 longer.
        let more = Totals {
            program: 100_000_000 + 10_000 * 17_000 + 5_000_000,
            clock_calibration: 35_000_000,
        };
        assert!((more.per_command_after(&fewer, 10_000) - 17_000.0).abs() < 1e-9);
    }

    #[test]
    fn only_this_scenarios_profiles_are_read() {
        let prefix = "server.inproc.1.16.2000";
        assert!(profile_of(
            Path::new("/t/server.inproc.1.16.2000.4242"),
            prefix
        ));
        for other in [
            "/t/server.inproc.1.16.20000.4242",
            "/t/server.inproc.1.16.2000.",
            "/t/server.inproc.1.16.2000.42x",
            "/t/load.inproc.1.16.2000.4242",
            "/t/server.inproc.1.16.2000",
        ] {
            assert!(!profile_of(Path::new(other), prefix), "{other}");
        }
    }
}
