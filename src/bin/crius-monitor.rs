//! `crius-monitor <pod dir>`: the per-pod monitor, started by `crius serve`
//! (see [`crius::monitor`]). A program of its own so that each pod pays
//! only for the monitor's code: single-threaded, no async runtime, no gRPC,
//! no configuration parsing.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--probe-userns" => {
            crius::monitor::process::probe::main(&PathBuf::from(dir))
        }
        (Some(dir), None, None) => crius::monitor::process::main(&PathBuf::from(dir)),
        _ => {
            eprintln!(
                "usage: crius-monitor <pod dir> | --probe-userns <dir> (started by crius serve)"
            );
            ExitCode::from(2)
        }
    }
}
