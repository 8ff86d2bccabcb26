//! The Prometheus series of PROTOCOL.md 4.4.
//!
//! Every server owns its own recorder: counters and the histogram are recorded into it with
//! [`metrics::with_local_recorder`], never through the process-wide recorder, so several
//! servers in one process (tests, an application embedding two) keep separate numbers.
//! Gauges are not tracked as they change: they are read from the hub, the session manager
//! and the queue when `/metrics` is scraped.

use std::time::Duration;

use bridge_protocol::{ErrorCode, Hops, Stage};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Upper bounds of the `bridge_command_duration_seconds` buckets.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// One server's metrics.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The handles of `bridge_commands_total{outcome}`, made the first time each outcome is
    /// counted (a series appears once it is first recorded, as before) and kept, so that a
    /// command costs an atomic increment, not a key, a label and a registry lookup.
    command_counters: parking_lot::RwLock<Vec<(&'static str, metrics::Counter)>>,
    /// The handle of `bridge_command_duration_seconds`, made at its first record.
    command_durations: std::sync::OnceLock<metrics::Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Gauge values read at scrape time.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub(crate) user_connections: usize,
    pub(crate) bridge_connections: usize,
    pub(crate) devices_online: usize,
    pub(crate) commands_pending: usize,
    /// Queued commands that are not final, by status.
    pub(crate) queue: Vec<(&'static str, usize)>,
    /// Nodes of the cluster this node sees alive; `None` outside a cluster.
    pub(crate) cluster_nodes: Option<usize>,
}

#[allow(clippy::cast_precision_loss)] // gauges of counts far below 2^52
fn gauge_value(n: usize) -> f64 {
    n as f64
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = match builder
            .set_buckets_for_metric(
                Matcher::Full("bridge_command_duration_seconds".into()),
                DURATION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("bridge_command_stage_seconds".into()),
                    DURATION_BUCKETS,
                )
            }) {
            Ok(b) => b,
            // Only refused for an empty bucket list, which this is not.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            recorder,
            handle,
            command_counters: parking_lot::RwLock::new(Vec::new()),
            command_durations: std::sync::OnceLock::new(),
        };
        metrics.with(|| {
            metrics::describe_gauge!("bridge_connections", "Open WebSocket connections by role.");
            metrics::describe_gauge!(
                "bridge_devices_online",
                "Devices held by at least one bridge."
            );
            metrics::describe_gauge!(
                "bridge_cluster_nodes",
                "Nodes of the cluster this node sees alive, itself included (PROTOCOL.md 5)."
            );
            metrics::describe_counter!(
                "bridge_commands_total",
                "Commands by outcome (the statuses of PROTOCOL.md 4.1)."
            );
            metrics::describe_gauge!(
                "bridge_commands_pending",
                "Commands sent to a bridge and awaiting the device's answer."
            );
            metrics::describe_histogram!(
                "bridge_command_duration_seconds",
                metrics::Unit::Seconds,
                "Time from sending a command to its end (answer, device error, timeout, bridge lost)."
            );
            metrics::describe_histogram!(
                "bridge_command_stage_seconds",
                metrics::Unit::Seconds,
                "Time from sending a command to each stage its bridge reported in ble_progress, by stage."
            );
            metrics::describe_gauge!(
                "bridge_queue_commands",
                "Queued commands that are not final, by status, across every device."
            );
            metrics::describe_counter!(
                "bridge_frames_rejected_total",
                "Frames answered with an error frame, by code."
            );
            metrics::describe_counter!(
                "bridge_task_panics_total",
                "Panics caught in the delivery engine's tasks and the hooks, by task; each was logged and recovered."
            );
            metrics::describe_counter!(
                "bridge_hook_events_dropped_total",
                "Events dropped because the hook queue was full (the hooks were slower than the events)."
            );
        });
        metrics
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// One more command ended with `outcome` (a status of PROTOCOL.md 4.1).
    pub(crate) fn command(&self, outcome: &'static str) {
        if let Some((_, counter)) = self
            .command_counters
            .read()
            .iter()
            // The same literal is usually the same address: equal without reading it.
            .find(|(known, _)| std::ptr::eq(*known, outcome) || *known == outcome)
        {
            counter.increment(1);
            return;
        }
        let counter =
            self.with(|| metrics::counter!("bridge_commands_total", "outcome" => outcome));
        counter.increment(1);
        // Outcomes are a short fixed list; two racing first uses register the same series.
        self.command_counters.write().push((outcome, counter));
    }

    /// A command that went out to a bridge ended after `elapsed`.
    pub(crate) fn command_duration(&self, elapsed: Duration) {
        self.command_durations
            .get_or_init(|| self.with(|| metrics::histogram!("bridge_command_duration_seconds")))
            .record(elapsed.as_secs_f64());
    }

    /// The stages a sent command's bridge reported, each at its time since the send
    /// (`bridge_command_stage_seconds{stage}`, PROTOCOL.md 4.1).
    pub(crate) fn stages(&self, hops: &Hops) {
        if hops.progress.is_empty() {
            return;
        }
        self.with(|| {
            for stage in [Stage::Received, Stage::Connected, Stage::Written] {
                if let Some(ms) = hops.progress.get(stage) {
                    metrics::histogram!("bridge_command_stage_seconds", "stage" => stage.as_str())
                        .record(f64::from(ms) / 1000.0);
                }
            }
        });
    }

    /// A frame was answered with an error frame.
    pub(crate) fn frame_rejected(&self, code: ErrorCode) {
        self.with(|| {
            metrics::counter!("bridge_frames_rejected_total", "code" => code.as_str()).increment(1);
        });
    }

    /// A task of the dispatcher panicked and was recovered.
    pub(crate) fn task_panicked(&self, task: &'static str) {
        self.with(|| {
            metrics::counter!("bridge_task_panics_total", "task" => task).increment(1);
        });
    }

    /// An event was dropped because the hook queue was full.
    pub(crate) fn hook_event_dropped(&self) {
        self.with(|| metrics::counter!("bridge_hook_events_dropped_total").increment(1));
    }

    /// The Prometheus text exposition, with gauges set to `gauges`.
    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        self.with(|| {
            metrics::gauge!("bridge_connections", "role" => "user")
                .set(gauge_value(gauges.user_connections));
            metrics::gauge!("bridge_connections", "role" => "bridge")
                .set(gauge_value(gauges.bridge_connections));
            metrics::gauge!("bridge_devices_online").set(gauge_value(gauges.devices_online));
            metrics::gauge!("bridge_commands_pending").set(gauge_value(gauges.commands_pending));
            if let Some(nodes) = gauges.cluster_nodes {
                metrics::gauge!("bridge_cluster_nodes").set(gauge_value(nodes));
            }
            for (status, n) in &gauges.queue {
                metrics::gauge!("bridge_queue_commands", "status" => *status).set(gauge_value(*n));
            }
        });
        self.handle.run_upkeep();
        self.handle.render()
    }
}
