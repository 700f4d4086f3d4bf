use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = dimegate::cli::Cli::parse();
    dimegate::cli::init_logging(cli.log_json);
    match dimegate::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(exit) = err.downcast_ref::<dimegate::cli::Exit>() {
                eprintln!("dimegate: {}", exit.message);
                return ExitCode::from(exit.code);
            }
            eprintln!("dimegate: {err:#}");
            ExitCode::from(1)
        }
    }
}
