//! The server's lifecycle as readiness probes see it: starting, ready,
//! draining, and the dependencies `/readyz` may also require. Written by
//! the main thread; read by `/readyz` (public port and admin listener)
//! only, never on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::metrics::MetricsRegistry;

/// Where the server is between start and exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Executors are still coming up.
    Starting,
    /// Every executor is serving.
    Ready,
    /// A shutdown signal arrived: finishing in-flight requests.
    Draining,
}

impl Stage {
    /// Whether to send this instance traffic, or why not.
    pub fn readiness(self) -> Result<(), String> {
        match self {
            Stage::Ready => Ok(()),
            Stage::Starting => Err("starting".into()),
            Stage::Draining => Err("draining".into()),
        }
    }
}

/// The shared stage.
#[derive(Debug)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    /// A lifecycle at [`Stage::Starting`].
    pub fn new() -> Self {
        Lifecycle(AtomicU8::new(Stage::Starting as u8))
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        match self.0.load(Ordering::Acquire) {
            0 => Stage::Starting,
            1 => Stage::Ready,
            _ => Stage::Draining,
        }
    }

    /// Move to `stage`.
    pub fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::Release);
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// The dependencies `/readyz` also requires, besides [`Stage::Ready`]:
/// each off unless asked for, so that a blip of a dependency every
/// instance shares does not pull every instance from the load balancer at
/// once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadinessChecks {
    /// Every executor's Redis client knows a master for every slot and is
    /// connected to each.
    pub redis: bool,
    /// This process's database core has committed a batch, or seen the
    /// queue empty, within this long.
    pub writeback_stall: Option<Duration>,
}

impl ReadinessChecks {
    /// Parse a comma-separated list: `redis`, `writeback`; empty for none.
    pub fn parse(text: &str, drain_stall: Duration) -> Result<ReadinessChecks, String> {
        let mut checks = ReadinessChecks::default();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "redis" => checks.redis = true,
                "writeback" => checks.writeback_stall = Some(drain_stall),
                other => {
                    return Err(format!(
                        "readyz_checks: {other:?} is not a check (redis, writeback)"
                    ));
                }
            }
        }
        Ok(checks)
    }
}

/// What `/readyz` answers, on the public port and the admin listener alike.
pub struct Readiness {
    lifecycle: Arc<Lifecycle>,
    registry: Arc<MetricsRegistry>,
    checks: ReadinessChecks,
}

impl Readiness {
    /// Readiness from the stage, and from the executors' and the database
    /// core's published figures as `checks` asks.
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        registry: Arc<MetricsRegistry>,
        checks: ReadinessChecks,
    ) -> Readiness {
        Readiness {
            lifecycle,
            registry,
            checks,
        }
    }

    /// The readiness as a metric, `millrace_ready`, for dashboards and
    /// alerts: 1 when `/readyz` answers 200, 0 when it answers 503.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP millrace_ready Whether /readyz answers 200 (1) or 503 (0).\n\
             # TYPE millrace_ready gauge\n",
        );
        out.push_str(if self.check().is_ok() {
            "millrace_ready 1\n"
        } else {
            "millrace_ready 0\n"
        });
    }

    /// Whether to send this instance traffic, or why not.
    pub fn check(&self) -> Result<(), String> {
        self.lifecycle.stage().readiness()?;
        if self.checks.redis
            && let Some(core) = self.registry.redis_unready_core()
        {
            return Err(format!(
                "the Redis Cluster client on CPU {core} lacks a connected master for some slots"
            ));
        }
        if let Some(stall) = self.checks.writeback_stall
            && let Some(since) = self.registry.writeback_stalled(stall)
        {
            return Err(format!(
                "the database core has not drained the write-back queue for {} ms",
                since.as_millis()
            ));
        }
        Ok(())
    }
}
