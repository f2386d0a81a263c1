//! The server's lifecycle as readiness probes see it: starting, ready,
//! draining. Written by the main thread; read by `/readyz` (public port and
//! admin listener) only, never on the hot path.

use std::sync::atomic::{AtomicU8, Ordering};

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
    pub fn readiness(self) -> Result<(), &'static str> {
        match self {
            Stage::Ready => Ok(()),
            Stage::Starting => Err("starting"),
            Stage::Draining => Err("draining"),
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
