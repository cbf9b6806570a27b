//! Command implementations behind the `starling` binary, one module per subcommand.
//! Each module owns its clap `Args` (or `Command`) and a `run` function returning `anyhow`.

pub mod cache;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod doctor;
pub mod estargz;
pub mod fdstore;
pub mod image;
pub mod merge;
pub mod mirror;
pub mod mount;
pub mod optimize;
pub mod prefetch;
pub mod rpull;
pub mod settings;
pub mod status;

/// Installs the tracing subscriber (stderr). Only the binary calls this.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
