//! DMTP command lines (both syntaxes of DIME.md §10.2): no panic; a parsed command writes back a
//! canonical line of at most 512 bytes that parses to the same command; the dual-mode STARTTLS
//! reader never panics either.
#![no_main]

use dimegate::dmtp::codec::{COMMAND_LINE_MAX, Command, parse_dual_mode_starttls};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_dual_mode_starttls(data);
    if let Ok(command) = Command::parse(data) {
        let line = command.to_line();
        assert!(line.len() <= COMMAND_LINE_MAX);
        assert_eq!(Command::parse(&line).expect("canonical line parses"), command);
    }
});
