//! The integration tests' view of the shared harness (`tools/harness`, crate
//! `jimbus-harness`): everything it exports, and a `Jimbus` that starts the
//! `jimbus` binary cargo built for these tests (`CARGO_BIN_EXE_jimbus`). It holds
//! no logic of its own and must never grow any: helpers belong in the harness.

#![allow(dead_code, unused_imports)]

pub use jimbus_harness::*;

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

/// A running `jimbus serve` of this build; everything else is the harness's
/// [`jimbus_harness::Jimbus`], reached through `Deref`.
pub struct Jimbus(jimbus_harness::Jimbus);

impl Jimbus {
    fn launcher() -> Launcher {
        Launcher::new(env!("CARGO_BIN_EXE_jimbus"))
    }

    /// Starts a server with a fresh data directory and any extra flags.
    pub fn start(extra: &[&str]) -> Self {
        Self(Self::launcher().args(extra).start())
    }

    /// Starts a server that writes compact log lines, as it does to a journal.
    pub fn start_with_compact_logs(extra: &[&str]) -> Self {
        Self(Self::launcher().compact_logs().args(extra).start())
    }

    /// Starts a server limited to `count` open file descriptors.
    pub fn start_with_max_open_files(count: u64, extra: &[&str]) -> Self {
        Self(Self::launcher().max_open_files(count).args(extra).start())
    }

    /// Starts a server on a data directory the caller prepared (and cleans up).
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Self {
        Self(Self::launcher().data_dir(data_dir).args(extra).start())
    }
}

impl Deref for Jimbus {
    type Target = jimbus_harness::Jimbus;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Jimbus {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
