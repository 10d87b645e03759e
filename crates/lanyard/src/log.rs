//! Where `tracing` events go: stderr.
//!
//! With `LANYARD_LOG` set (directives such as `debug` or
//! `lanyard_engine=trace,warn`: [`filter`]), and always for `lanyard daemon`, the full
//! `tracing-subscriber` formatter. Otherwise — every plain CLI call — [`Warnings`],
//! which prints warnings and errors as `lanyard: warning: …` and nothing else. It
//! exists for speed: the formatter's span registry and filter parsing cost a short
//! call about as much as a netlink round trip, for events that are never printed.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The environment variable naming what to log.
pub const ENV: &str = "LANYARD_LOG";

/// Installs the global subscriber; `long_running`: the full formatter even without
/// `LANYARD_LOG` (the daemon, whose log is read later).
pub fn init(long_running: bool) {
    if long_running || std::env::var_os(ENV).is_some() {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter(std::env::var(ENV).ok().as_deref()))
            .init();
    } else {
        // Only fails if a subscriber is already set, which then stays.
        let _ = tracing::subscriber::set_global_default(Warnings);
    }
}

/// What `LANYARD_LOG` asks for: `LEVEL` or `TARGET=LEVEL` directives, comma
/// separated (tracing-subscriber's `Targets`: the `EnvFilter` syntax without span
/// and field filters, and without the regex engine those need); warnings and
/// errors when unset or unreadable.
fn filter(directives: Option<&str>) -> tracing_subscriber::filter::Targets {
    let warn = || tracing_subscriber::filter::Targets::new().with_default(LevelFilter::WARN);
    match directives.map(str::parse) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("lanyard: warning: {ENV}: {e}; logging warnings only");
            warn()
        }
        None => warn(),
    }
}

/// A subscriber for warnings and errors only, without spans.
#[derive(Debug, Clone, Copy)]
pub struct Warnings;

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are disabled (`enabled` refuses every level below WARN, and lanyard
        // opens none at WARN); any id will do.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        eprintln!("{}", line(event));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// One event as a line: `lanyard: warning: message key=value …`.
fn line(event: &Event<'_>) -> String {
    let level = if *event.metadata().level() == Level::ERROR {
        "error"
    } else {
        "warning"
    };
    let mut v = Line(format!("lanyard: {level}:"));
    event.record(&mut v);
    v.0
}

/// Collects an event's fields: the message as is, others as `key=value`.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn lanyard_log_takes_levels_per_target_and_falls_back_to_warnings() {
        let t = filter(Some("lanyard_engine=trace,lanyard=debug,info"));
        assert!(t.would_enable("lanyard_engine::endpoint", &Level::TRACE));
        assert!(t.would_enable("lanyard", &Level::DEBUG));
        assert!(!t.would_enable("lanyard", &Level::TRACE));
        assert!(t.would_enable("rusqlite", &Level::INFO));
        assert!(!t.would_enable("rusqlite", &Level::DEBUG));
        for warn_only in [filter(None), filter(Some("lanyard=loud"))] {
            assert!(warn_only.would_enable("lanyard", &Level::WARN));
            assert!(!warn_only.would_enable("lanyard", &Level::INFO));
        }
    }

    /// Records the lines [`Warnings`] would print.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            Warnings.enabled(m)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            Warnings.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            self.0.lock().unwrap().push(line(e));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn prints_warnings_and_errors_with_their_fields_and_drops_the_rest() {
        let lines = Arc::new(Mutex::new(vec![]));
        tracing::subscriber::with_default(Capture(lines.clone()), || {
            tracing::info!("not shown");
            tracing::debug!(x = 1, "not shown either");
            tracing::warn!("endpoint {} left pending", "abc");
            tracing::error!(code = 3, name = "eth0", "gave up");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "lanyard: warning: endpoint abc left pending",
                "lanyard: error: gave up code=3 name=\"eth0\"",
            ]
        );
    }
}
