//! The tracing layer that writes the agent's log lines ([`Line`]) to
//! stderr: `ts`, `level`, `target`, `msg` and the event's fields. Records
//! of the `log` crate (aya-log's, from the eBPF programs) arrive through
//! tracing-log and keep their own target.

use std::io::Write as _;

use serde_json::Value;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::layer::Context;

use super::{Format, line::Line};
use crate::decode;

pub struct Layer {
    pub format: Format,
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = start(self.format, *meta.level(), meta.target(), &fields.message);
        for (key, value) in fields.rest {
            line.field(key, value);
        }
        write(line);
    }
}

/// A line's opening fields.
pub fn start(format: Format, level: Level, target: &str, msg: &str) -> Line {
    let mut line = Line::new(format);
    line.str("ts", &decode::rfc3339(std::time::SystemTime::now()))
        .str("level", &level.as_str().to_ascii_lowercase())
        .str("target", target)
        .str("msg", msg);
    line
}

/// Writes a line to stderr in one call; a closed stderr is not worth dying
/// over.
pub fn write(line: Line) {
    let _ = std::io::stderr().lock().write_all(line.finish().as_bytes());
}

/// An event's message and its other fields, in order.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                if let Value::String(s) = value {
                    self.message = s;
                }
            }
            // tracing-log's own fields: the target is taken from them above.
            name if name.starts_with("log.") => {}
            name => self.rest.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::String(format!("{value:#}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, Value::String(format!("{value:?}")));
    }
}
