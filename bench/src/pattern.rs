//! A deterministic byte stream that both ends of a transfer know, so the
//! receiver checks every byte with a `memcmp` instead of hashing.
//!
//! The stream is a pseudo-random block repeated; its length is odd (not a
//! multiple of any buffer or pipe size), so a lost, duplicated or reordered
//! chunk shows up as a mismatch, and the byte count catches the rest.

/// Length of the repeated block: 4 MiB plus an odd prime.
pub const PATTERN_LEN: usize = 4 * 1024 * 1024 + 4093;

/// The repeated block for one seed.
pub struct Pattern {
    data: Vec<u8>,
}

impl Pattern {
    /// Generates the block with xorshift64 from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed | 1;
        let mut data = Vec::with_capacity(PATTERN_LEN + 8);
        while data.len() < PATTERN_LEN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(PATTERN_LEN);
        Self { data }
    }

    /// The stream's bytes from offset `pos`, at most `max` of them (fewer at
    /// the end of the block).
    pub fn chunk(&self, pos: usize, max: usize) -> &[u8] {
        let off = pos % PATTERN_LEN;
        let len = max.min(PATTERN_LEN - off);
        &self.data[off..off + len]
    }

    /// Whether `buf` equals the stream's bytes from offset `pos`.
    pub fn matches(&self, mut pos: usize, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            let want = self.chunk(pos, buf.len());
            let (head, rest) = buf.split_at(want.len());
            if head != want {
                return false;
            }
            pos += want.len();
            buf = rest;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reassemble_and_verify_across_the_wrap() {
        let p = Pattern::new(7);
        let start = PATTERN_LEN - 100;
        let mut stream = Vec::new();
        let mut pos = start;
        while stream.len() < 300 {
            let c = p.chunk(pos, 300 - stream.len());
            stream.extend_from_slice(c);
            pos += c.len();
        }
        assert!(p.matches(start, &stream));
        assert!(!p.matches(start + 1, &stream));
        stream[150] ^= 1;
        assert!(!p.matches(start, &stream));
    }

    #[test]
    fn seeds_differ() {
        assert!(!Pattern::new(1).matches(0, Pattern::new(2).chunk(0, 64)));
    }
}
