//! Generate man pages and shell completions from the clap definitions in `src/cli.rs`.
//! `make` runs it: `cargo run --example gen-docs -- build/docs`. Not part of the installed
//! binaries (clap_mangen and clap_complete are dev-dependencies).

use atomic_preload::cli::{GeneratorCli, HelperCli};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "build/docs".into()),
    );
    let (man1, man8, completions) = (out.join("man1"), out.join("man8"), out.join("completions"));
    for dir in [&man1, &man8, &completions] {
        std::fs::create_dir_all(dir)?;
    }
    clap_mangen::Man::new(GeneratorCli::command())
        .section("8")
        .generate_to(&man8)?;
    // atomic-preload.1 and one page per subcommand (atomic-preload-load.1, …).
    clap_mangen::generate_to(HelperCli::command(), &man1)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(
            shell,
            &mut HelperCli::command(),
            "atomic-preload",
            &completions,
        )?;
    }
    Ok(())
}
