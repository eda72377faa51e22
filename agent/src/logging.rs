//! The agent's log: logfmt or JSON lines on stderr.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Logfmt,
    Json,
}

/// `RUST_LOG` wins over `--log.level` when set.
pub fn init(format: Format, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        Format::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
}
