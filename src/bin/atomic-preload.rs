//! The `atomic-preload` command: `validate` for operators, and the stage helpers that
//! generated units call (`atomic_preload::stages`), and the operator's commands
//! (`atomic_preload::commands`).

use atomic_preload::cli::{HelperCli, HelperCommand};
use atomic_preload::{commands, generator, runtime, stages};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = HelperCli::parse();
    let result = match cli.command {
        HelperCommand::Validate { file } => {
            let effective = generator::load_effective(&file);
            let problems = effective.all_problems();
            let shown = file.display().to_string();
            for problem in &problems {
                println!("{}", problem.display(&shown));
            }
            return if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        HelperCommand::ConfigError { messages } => {
            for message in &messages {
                eprintln!("{message}");
            }
            eprintln!("Fix the config, then run: systemctl daemon-reload");
            return ExitCode::FAILURE;
        }
        HelperCommand::Status(args) => {
            return match commands::status::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("atomic-preload: {err}");
                    ExitCode::from(2)
                }
            };
        }
        HelperCommand::Load(args) => stages::load::run(&args),
        HelperCommand::Install(args) => stages::install::run(&args),
        HelperCommand::Refresh(args) => commands::refresh::run(&args),
        HelperCommand::Run(args) => stages::run::run(&args),
        HelperCommand::InstallSystem(args) => stages::system::install(&args),
        HelperCommand::StartSystem(args) => stages::system::start(&args),
        HelperCommand::Rollback(args) => stages::system::rollback(&args),
        HelperCommand::Uninstall(args) => commands::uninstall::run(&args),
        HelperCommand::Stage(args) => commands::stage::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("atomic-preload: {err}");
            runtime::notify::status(&err.to_string());
            ExitCode::from(err.exit_code())
        }
    }
}
