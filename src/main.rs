//! Entry point: parses flags, loads the configuration, sets up logging, binds the
//! listener and wires SIGTERM/SIGINT to a graceful shutdown. The library does the rest.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use iam_key_exporter::cli::{Cli, Command};
use iam_key_exporter::config::{self, LogFormat, LogLevel, Settings};
use iam_key_exporter::web_config::WatchedWebConfig;
use tokio::signal::unix::{SignalKind, signal};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit code for a configuration the exporter refuses, or a malformed argument, as for a
/// bad flag.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(cli.config_file.as_deref(), &cli.overrides()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("iam-key-exporter: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // Read in every mode, like the rest of the configuration: a bad file is refused at once.
    let web_config = match WatchedWebConfig::open(settings.web.config_file.as_deref()) {
        Ok(web_config) => web_config,
        Err(err) => {
            eprintln!("iam-key-exporter: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check_config {
        println!("configuration is valid:\n{settings:#?}");
        return ExitCode::SUCCESS;
    }
    init_tracing(&settings);
    if let Some(Command::Whois { key_id }) = &cli.command {
        return whois(settings, key_id);
    }
    if cli.once {
        return once(settings, cli.once_service_access, cli.once_file.as_deref());
    }
    match serve(settings, web_config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn whois(settings: Settings, key_id: &str) -> ExitCode {
    // A malformed id needs no AWS clients to be told so.
    if let Err(err) = iam_key_exporter::whois::decode(key_id) {
        eprintln!("iam-key-exporter: {err}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let metrics = std::sync::Arc::new(iam_key_exporter::metrics::ExporterMetrics::new());
    let base = iam_key_exporter::iam::AwsBase::load(&settings.aws, metrics).await;
    match iam_key_exporter::whois::whois(&base, &settings, key_id).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("iam-key-exporter: {err}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

#[tokio::main]
async fn once(
    settings: Settings,
    service_access: bool,
    file: Option<&std::path::Path>,
) -> ExitCode {
    let body = match iam_key_exporter::once(settings, service_access).await {
        Ok(body) => body,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let written = match file {
        Some(path) => iam_key_exporter::write_atomically(path, &body)
            .with_context(|| format!("writing {}", path.display())),
        None => std::io::stdout()
            .write_all(&body)
            .context("writing to standard output"),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(settings: Settings, web_config: WatchedWebConfig) -> anyhow::Result<()> {
    let address = config::parse_listen_address(&settings.web.listen_address)
        .context("listen address was validated")?;
    let listener = iam_key_exporter::http::bind(&address).await?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = %listener.local_addr()?,
        "listening"
    );
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    };
    iam_key_exporter::run(settings, listener, web_config, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Our own events at the configured level. Dependencies (the AWS SDK, hyper) are held at
/// `info` at most: their debug and trace output is request-level noise that no operator
/// needs from an exporter, and it is where credentials-adjacent detail would appear.
fn init_tracing(settings: &Settings) {
    let level = match settings.log.level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("iam_key_exporter", level)
        .with_default(level.min(LevelFilter::INFO));
    match settings.log.format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .with(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .with(filter)
            .init(),
    }
}
