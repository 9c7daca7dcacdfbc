//! Log output of a compute service: every line carries a UTC timestamp,
//! the service id and the level, as upstream's
//! `[%(asctime)s] [%(compute_service_id)s] [%(levelname)s] %(message)s`, e.g.
//!
//! ```text
//! [2024-01-02 03:04:05,678] [host1-0123456789abcdef0123456789abcdef] [INFO] Claimed 1 tasks
//! ```
//!
//! Lines go to standard error and, if `logfile` is set, are appended to that file too.
//! `loglevel` applies to this service's own messages (and the client's); other libraries
//! log warnings and errors only. `RUST_LOG`, when set, replaces that filter.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::Settings;

/// Formats events as upstream's compute service does.
#[derive(Debug, Clone)]
pub struct ServiceLogFormat {
    /// The service id shown on every line.
    pub service_id: String,
}

/// Python's level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE | Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARNING",
        Level::ERROR => "ERROR",
    }
}

impl<S, N> FormatEvent<S, N> for ServiceLogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S,%3f");
        write!(writer, "[{now}] [{}] [{}] ", self.service_id, level_name(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The filter for `level` on the given crates' messages (other libraries log warnings and
/// errors only); `RUST_LOG`, when set, replaces it.
pub fn filter(level: LevelFilter, crates: &[&str]) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_env("RUST_LOG") {
        return f;
    }
    let level = level.to_string().to_lowercase();
    let mut directives = vec!["warn".to_string()];
    directives.extend(crates.iter().map(|c| format!("{c}={level}")));
    EnvFilter::new(directives.join(","))
}

/// Install the global subscriber for a service: standard error plus `logfile`.
pub fn init(settings: &Settings, service_id: &str) -> Result<(), String> {
    init_with(
        service_id,
        settings.log_level(),
        settings.logfile.as_deref(),
        &["alchemiscale_compute", "alchemiscale_client", "alchemiscale"],
    )
}

/// Install the global subscriber: lines in upstream's format tagged `id`, to standard
/// error and, if given, appended to `logfile`; `level` for `crates`.
pub fn init_with(id: &str, level: LevelFilter, logfile: Option<&std::path::Path>, crates: &[&str]) -> Result<(), String> {
    let format = ServiceLogFormat { service_id: id.to_string() };
    let stderr = tracing_subscriber::fmt::layer().event_format(format.clone()).with_writer(std::io::stderr).with_ansi(false);
    let file = match logfile {
        None => None,
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open logfile {}: {e}", path.display()))?;
            Some(tracing_subscriber::fmt::layer().event_format(format).with_writer(Mutex::new(f)).with_ansi(false))
        }
    };
    tracing_subscriber::registry()
        .with(stderr.and_then(file).with_filter(filter(level, crates)))
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}
