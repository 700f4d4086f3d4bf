//! Byte reader and writer for DIME's big-endian framing, shaped like rustls' `msgs/codec.rs`:
//! the reader never panics, reports what it was reading when input runs out, and whole-buffer
//! decoding ends with `expect_empty` so trailing bytes are refused.

use super::Error;

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    object: &'static str,
}

impl<'a> Reader<'a> {
    /// Read `buf`; errors name `object`.
    pub(crate) fn new(buf: &'a [u8], object: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            object,
        }
    }

    /// Bytes not yet consumed.
    pub(crate) fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes consumed so far.
    pub(crate) fn used(&self) -> usize {
        self.pos
    }

    /// The next byte without consuming it.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Consume exactly `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.left() {
            return Err(Error::Truncated {
                object: self.object,
                need: n,
                have: self.left(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Consume everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    #[allow(dead_code)]
    pub(crate) fn u24(&mut self) -> Result<u32, Error> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    // For the u32 message frame (dime::message).
    #[allow(dead_code)]
    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian unsigned length of `width` bytes (0..=4; 0 reads as 0).
    pub(crate) fn uint(&mut self, width: usize) -> Result<usize, Error> {
        let b = self.take(width)?;
        Ok(b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
    }

    /// Refuse leftovers: the end of every whole-buffer `parse`.
    pub(crate) fn expect_empty(&self) -> Result<(), Error> {
        match self.left() {
            0 => Ok(()),
            count => Err(Error::TrailingBytes {
                object: self.object,
                count,
            }),
        }
    }
}

/// Append big-endian integers and length-prefixed values to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer::default()
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    // For the u32 message frame (dime::message).
    #[allow(dead_code)]
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// Write `len` as a `width`-byte big-endian integer, refusing values that do not fit.
    pub(crate) fn uint(
        &mut self,
        width: usize,
        len: usize,
        object: &'static str,
    ) -> Result<(), Error> {
        let max = max_for_width(width);
        if len > max {
            return Err(Error::TooLarge { object, len, max });
        }
        for i in (0..width).rev() {
            self.buf.push((len >> (8 * i)) as u8);
        }
        Ok(())
    }

    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Largest value a `width`-byte length prefix holds.
pub(crate) fn max_for_width(width: usize) -> usize {
    match width {
        0 => 0,
        1 => 0xff,
        2 => 0xffff,
        3 => 0xff_ffff,
        _ => 0xffff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_with_counts() {
        let mut r = Reader::new(&[1, 2], "thing");
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(
            r.u24(),
            Err(Error::Truncated {
                object: "thing",
                need: 3,
                have: 0
            })
        );
    }

    #[test]
    fn expect_empty_refuses_leftovers() {
        let mut r = Reader::new(&[0, 0, 0, 9], "thing");
        assert_eq!(r.u24().unwrap(), 0);
        assert_eq!(
            r.expect_empty(),
            Err(Error::TrailingBytes {
                object: "thing",
                count: 1
            })
        );
    }

    #[test]
    fn writer_refuses_oversized_lengths() {
        let mut w = Writer::new();
        assert!(w.uint(1, 256, "x").is_err());
        w.uint(3, 0x01_0203, "x").unwrap();
        assert_eq!(w.into_inner(), vec![1, 2, 3]);
    }

    #[test]
    fn uint_round_trips_every_width() {
        for width in 0..=4usize {
            let v = max_for_width(width);
            let mut w = Writer::new();
            w.uint(width, v, "x").unwrap();
            let bytes = w.into_inner();
            let mut r = Reader::new(&bytes, "x");
            assert_eq!(r.uint(width).unwrap(), v);
            r.expect_empty().unwrap();
        }
    }
}
