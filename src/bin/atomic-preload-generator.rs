//! systemd generator entry point; see `atomic_preload::generator`.

use atomic_preload::cli::GeneratorCli;
use atomic_preload::generator::{self, Options};
use atomic_preload::log::{Level, Logger};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = GeneratorCli::parse();
    let mut log = Logger::for_generator("atomic-preload-generator");
    let options = Options {
        output_dir: cli.normal_dir,
        config_file: Some(cli.config),
        preload_dir: Some(cli.preload_dir),
        root: cli.root,
        dry_run: cli.dry_run,
    };
    let outcome = generator::run(&options, &mut log, &mut std::io::stdout().lock());
    if outcome.failures > 0 {
        log.log(
            Level::Error,
            &format!("{} file(s) could not be generated", outcome.failures),
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
