//! The byte stream every transfer carries: a pseudo-random block, repeated. Its
//! length is odd, so a lost, repeated or reordered chunk lands on different
//! bytes and shows.

/// Length of the repeated block: 1 MiB plus an odd prime.
pub const BLOCK_LEN: usize = (1 << 20) + 4093;

/// Bytes checked at every 4 KiB boundary by [`Pattern::spot_check`].
const SPOT_LEN: usize = 16;

/// The repeated block.
pub struct Pattern {
    block: Vec<u8>,
}

impl Pattern {
    /// The block every end of the bench uses (xorshift64 from a fixed seed).
    pub fn new() -> Self {
        let mut x: u64 = 0x5eed_b0a7_0000_0001;
        let mut block = Vec::with_capacity(BLOCK_LEN + 8);
        while block.len() < BLOCK_LEN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        block.truncate(BLOCK_LEN);
        Self { block }
    }

    /// The stream from offset `pos`: at most `max` bytes, fewer at the block's end.
    pub fn chunk(&self, pos: u64, max: usize) -> &[u8] {
        let off = usize::try_from(pos % BLOCK_LEN as u64).unwrap_or(0);
        let len = max.min(BLOCK_LEN - off);
        &self.block[off..off + len]
    }

    /// Whether `buf` is the stream from offset `pos`, every byte.
    pub fn matches(&self, mut pos: u64, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            let want = self.chunk(pos, buf.len());
            let (head, rest) = buf.split_at(want.len());
            if head != want {
                return false;
            }
            pos += want.len() as u64;
            buf = rest;
        }
        true
    }

    /// Whether `buf` (the stream from `pos`) matches at every 4 KiB boundary
    /// of the stream inside it, 16 bytes each. A guest receiver checks this
    /// much, since checking every byte in an emulated CPU would cost more than
    /// some of the forwarding it measures; the host checks every byte.
    pub fn spot_check(&self, pos: u64, buf: &[u8]) -> bool {
        let end = pos + buf.len() as u64;
        let mut at = pos.next_multiple_of(4096);
        while at < end {
            let i = usize::try_from(at - pos).unwrap_or(usize::MAX);
            let n = SPOT_LEN.min(buf.len() - i);
            if !self.matches(at, &buf[i..i + n]) {
                return false;
            }
            at += 4096;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_stream_fails_both_checks() {
        let p = Pattern::new();
        let start = BLOCK_LEN as u64 - 5000;
        let mut stream = Vec::new();
        while stream.len() < 20_000 {
            let c = p.chunk(start + stream.len() as u64, 20_000 - stream.len());
            stream.extend_from_slice(c);
        }
        assert!(p.matches(start, &stream));
        assert!(p.spot_check(start, &stream));
        assert!(!p.matches(start + 1, &stream));
        assert!(!p.spot_check(start + 1, &stream));
        // a changed byte at a 4 KiB boundary of the stream is spotted
        let at = usize::try_from(start.next_multiple_of(4096) - start).unwrap();
        stream[at] ^= 1;
        assert!(!p.spot_check(start, &stream));
    }
}
