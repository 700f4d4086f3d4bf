//! DMTP replies: no panic; a parsed reply formats to bytes that parse to the same reply; the
//! streaming reader gives the same replies whether the bytes come whole or split (the first byte
//! picks the piece size) and never buffers past its limits.
#![no_main]

use dimegate::dmtp::codec::{REPLY_LINE_MAX, REPLY_MAX, Reply, ReplyReader};
use libfuzzer_sys::fuzz_target;

fn read_all(data: &[u8], size: usize) -> (Vec<Reply>, bool) {
    let mut reader = ReplyReader::new();
    let mut replies = Vec::new();
    for chunk in data.chunks(size.max(1)) {
        let mut input = chunk;
        while !input.is_empty() {
            match reader.push(&mut input) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => {}
                Err(_) => return (replies, true),
            }
            assert!(reader.buffered_len() <= REPLY_MAX + REPLY_LINE_MAX);
        }
    }
    (replies, false)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = Reply::parse(data) {
        let bytes = reply.to_bytes();
        assert_eq!(Reply::parse(&bytes).expect("formatted reply parses"), reply);
    }
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let whole = read_all(rest, usize::MAX);
    let split = read_all(rest, usize::from(size));
    assert_eq!(whole, split, "split changed the replies");
});
