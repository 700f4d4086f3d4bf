use clap::Parser;
use std::process::ExitCode;

// The server's allocator and its settings: why, in `dimegate::malloc`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc reads its options from this symbol before `main` (a C string: a thin pointer).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &u8 = &dimegate::malloc::CONF[0];

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
