//! The `hookd` binary: parses argv and the environment, then hands over to the library.
//! This is the only place that decides the process exit code.

use clap::Parser;
use hookd::config::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // ureq and rustls dump whole requests at debug/trace, handshake codes and
        // signatures included: never below info, whatever RUST_LOG says.
        .filter_module("ureq", log::LevelFilter::Info)
        .filter_module("ureq_proto", log::LevelFilter::Info)
        .filter_module("rustls", log::LevelFilter::Info)
        .init();
    let result = match cli.command {
        Command::Serve(args) => args
            .into_config()
            .map_err(|e| e.to_string())
            .and_then(|config| hookd::server::run(config).map_err(|e| e.to_string())),
        Command::Admin(command) => hookd::cli::run(command),
        Command::Bench(args) => hookd::bench::run(*args),
    };
    if let Err(message) = result {
        eprintln!("hookd: {message}");
        std::process::exit(1);
    }
}
