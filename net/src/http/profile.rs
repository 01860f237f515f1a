//! CPU profiles on demand, for `GET /debug/pprof/profile?seconds=N[&format=svg]`:
//! a sampling profiler (pprof-rs, SIGPROF-based, every thread of the process)
//! runs for N seconds while the shard that took the request keeps serving, then
//! the report is encoded as a pprof protobuf (for `go tool pprof`) or a
//! flamegraph SVG. Off unless the server runs with `--enable-profiling`.
//! It must never run two profiles at once or block the executor while sampling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest profile a request may ask for.
const MAX_SECONDS: u64 = 120;
/// Samples per second: prime, so sampling does not lock onto periodic work.
const FREQUENCY: i32 = 99;

static RUNNING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pprof,
    Svg,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    BadQuery(String),
    #[error("a profile is already running; retry when it ends")]
    Busy,
    #[error("the profiler failed: {0}")]
    Profiler(String),
    #[error("no samples were taken: the process was idle for the whole profile")]
    NoSamples,
}

/// `seconds` (1..=120, default 30) and `format` (`pprof`, the default, or `svg`).
pub fn parse_query(query: Option<&str>) -> Result<(Duration, Format), ProfileError> {
    let (mut seconds, mut format) = (30, Format::Pprof);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("seconds", n)) => {
                seconds = n
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_SECONDS).contains(s))
                    .ok_or_else(|| ProfileError::BadQuery(format!("seconds: {n:?} is not 1 to {MAX_SECONDS}")))?;
            }
            Some(("format", "svg")) => format = Format::Svg,
            Some(("format", "pprof" | "proto")) => format = Format::Pprof,
            _ => return Err(ProfileError::BadQuery(format!("{pair:?}: expected seconds=N or format=pprof|svg"))),
        }
    }
    Ok((Duration::from_secs(seconds), format))
}

/// Releases the one-profile-at-a-time flag however the capture ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Samples the whole process for `length`, then returns the content type and bytes.
pub async fn capture(length: Duration, format: Format) -> Result<(&'static str, Vec<u8>), ProfileError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    let _running = Running;
    let failed = |e: pprof::Error| ProfileError::Profiler(e.to_string());
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(failed)?;
    glommio::timer::sleep(length).await;
    let report = guard.report().build().map_err(failed)?;
    let mut out = Vec::new();
    match format {
        Format::Svg => {
            report.flamegraph(&mut out).map_err(failed)?;
            if out.is_empty() {
                return Err(ProfileError::NoSamples);
            }
            Ok(("image/svg+xml", out))
        }
        Format::Pprof => {
            let profile = report.pprof().map_err(failed)?;
            pprof::protos::Message::encode(&profile, &mut out).map_err(|e| ProfileError::Profiler(e.to_string()))?;
            Ok(("application/octet-stream", out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_and_bad_ones_named() {
        assert_eq!(parse_query(None).unwrap(), (Duration::from_secs(30), Format::Pprof));
        assert_eq!(parse_query(Some("seconds=2&format=svg")).unwrap(), (Duration::from_secs(2), Format::Svg));
        let err = parse_query(Some("seconds=0")).unwrap_err().to_string();
        assert!(err.contains("seconds"), "{err}");
        assert!(parse_query(Some("format=gif")).is_err());
    }
}
