//! `alchemiscale-execute --input DIR --output FILE`: the native executor on its own, the
//! same as `alchemiscale compute execute` (see `alchemiscale_compute::child`). The
//! compute crate's tests run it; deployments use the `alchemiscale` binary.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut input: Option<PathBuf> = None;
    let mut output: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--input") => input = args.next().map(PathBuf::from),
            Some("--output") => output = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: alchemiscale-execute --input DIR --output FILE");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        eprintln!("usage: alchemiscale-execute --input DIR --output FILE");
        return ExitCode::from(2);
    };
    match alchemiscale_compute::child::execute(&input, &output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}
