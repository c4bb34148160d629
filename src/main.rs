//! The `hookd` binary: parses argv and the environment, then hands over to the library.
//! This is the only place that decides the process exit code.

use clap::Parser;
use hookd::config::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Serve(args) => args
            .into_config()
            .map_err(|e| e.to_string())
            .and_then(|config| hookd::server::run(config).map_err(|e| e.to_string())),
        Command::Backup(args) => hookd::store::backup(&args.db, &args.path)
            .map(|()| {
                println!("backed up {} to {}", args.db.display(), args.path.display());
                eprintln!(
                    "note: hook secrets in the copy are sealed with the key file \
                     (hookd.key beside the database); keep a copy of it, stored apart"
                );
            })
            .map_err(|e| e.to_string()),
    };
    if let Err(message) = result {
        eprintln!("hookd: {message}");
        std::process::exit(1);
    }
}
