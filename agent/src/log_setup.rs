//! Logging: the filter (`EMBERPROF_LOG`, else warnings) and the one message never shown.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the process's logger on stderr.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBERPROF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(QuietTaskStorage)
        .with(filter)
        .with(fmt)
        .init();
}

/// Drops aya's warning, at every load, that it has no wrapper for the off-CPU program's
/// task storage map: only the program uses that map, and a user can do nothing about it.
/// Every other message of aya's (and every level the filter lets through) is kept.
pub struct QuietTaskStorage;

impl<S: Subscriber> Layer<S> for QuietTaskStorage {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let target = event.metadata().target();
        // aya logs through `log`: such events come with the target `log` and the real one
        // in a field. Anything else is never looked into.
        if target != "log" && !target.starts_with("aya") {
            return true;
        }
        let mut seen = TaskStorageWarning {
            from_aya: target.starts_with("aya"),
            warning: false,
        };
        event.record(&mut seen);
        !(seen.from_aya && seen.warning)
    }
}

/// Whether an event is aya's task-storage warning.
struct TaskStorageWarning {
    from_aya: bool,
    warning: bool,
}

impl Visit for TaskStorageWarning {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.warning |= is_task_storage_warning(value),
            "log.target" => self.from_aya |= value.starts_with("aya"),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.warning |= is_task_storage_warning(&format!("{value:?}")),
            "log.target" => self.from_aya |= format!("{value:?}").starts_with("\"aya"),
            _ => {}
        }
    }
}

/// aya 0.13: "The map NAME is of type BPF_MAP_TYPE_TASK_STORAGE which is currently
/// unsupported in Aya, use `allow_unsupported_maps()` to load it anyways".
fn is_task_storage_warning(text: &str) -> bool {
    text.contains("BPF_MAP_TYPE_TASK_STORAGE") && text.contains("unsupported in Aya")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_the_task_storage_warning_is_dropped() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(QuietTaskStorage).with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: "aya::bpf",
                "The map ep_off_start is of type BPF_MAP_TYPE_TASK_STORAGE which is currently unsupported in Aya, use `allow_unsupported_maps()` to load it anyways"
            );
            tracing::warn!(target: "aya::bpf", "Object BTF couldn't be loaded in the kernel: EINVAL");
            tracing::warn!(target: "emberprof", "BPF_MAP_TYPE_TASK_STORAGE unsupported in Aya, said by us");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("ep_off_start"), "{text}");
        assert!(text.contains("Object BTF couldn't be loaded"), "{text}");
        assert!(text.contains("said by us"), "{text}");
    }
}
