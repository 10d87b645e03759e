//! `lanyard man`: the manual pages, generated from the command definitions in
//! [`crate::cli`] (clap_mangen), in section 8 (system administration: lanyard runs
//! as root). One page for `lanyard`, and with `--dir` one more per subcommand at any
//! depth (`lanyard-network-create.8`: its options in full), as the package installs
//! them.

use crate::cli::Cli;
use crate::output::out;
use clap::CommandFactory;
use lanyard_core::{Error, Result};
use std::path::Path;

/// The manual section of every page.
const SECTION: &str = "8";

fn io(what: &Path, e: std::io::Error) -> Error {
    Error::Other(format!("writing {}: {e}", what.display()))
}

/// Prints `lanyard(8)` to stdout, or with `dir` writes it and one page per
/// subcommand there, printing each file's path.
pub fn run(dir: Option<&Path>) -> Result<i32> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Builds every deferred subcommand and gives each its display name
    // (`lanyard-network-create`).
    cmd.build();
    let Some(dir) = dir else {
        page(cmd)
            .render(&mut std::io::stdout())
            .map_err(|e| io(Path::new("stdout"), e))?;
        return Ok(0);
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    write_all(cmd, dir)?;
    Ok(0)
}

/// The page of `cmd`, in [`SECTION`], its source naming lanyard's version.
fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section(SECTION)
        .source(format!("lanyard {}", crate::cli::VERSION))
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth first.
fn write_all(cmd: clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_all(sub.clone(), dir)?;
    }
    let path = page(cmd).generate_to(dir).map_err(|e| io(dir, e))?;
    out!("{}", path.display());
    Ok(())
}
