//! `cascade-agent DIR`: the workstation agent on its own, without the site
//! server, DP and CLI that the `cascade` binary also carries. It runs an
//! agent enrolled with `cascade agent init DIR …` exactly as
//! `cascade agent run DIR` does, in a smaller process: what a workstation
//! keeps resident is mostly the pages of the binary it runs.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cascade-agent DIR\n\n\
Runs the workstation agent whose data directory DIR was made by\n\
`cascade agent init DIR --site URL --join-token T --name NAME`,\n\
until SIGTERM or Ctrl-C. Logs go to stderr: CASCADE_LOG sets the filter\n\
(e.g. debug, info,cascade_agent=debug), CASCADE_LOG_FORMAT=json writes JSON lines.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = cascade_protocol::logging::init("info", None) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    // One thread is all an idle agent needs, and keeps it small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cascade_agent::run(
        &dir,
        cascade_protocol::signal::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = cascade_protocol::chain(&err);
            eprintln!("error: running the agent in {}: {err}", dir.display());
            ExitCode::FAILURE
        }
    }
}
