//! Adaptive per-chunk zstd compression, and bomb-safe decompression.
//!
//! The sender compresses each chunk independently (so chunks can be retransmitted and
//! resumed in any order). [`AdaptiveCompressor`] keeps compressing while it pays: when a
//! sample of chunks shrinks by less than [`MIN_RATIO`], it sends raw data for a while and
//! probes again later, so a folder of JPEGs or a random file costs almost no CPU. A
//! chunk whose compressed form is not smaller than the raw data is always sent raw.
//!
//! The receiver decompresses into a buffer the size the chunk must have; a frame that
//! would expand beyond it is rejected, never allocated.

/// Compression must shrink a sample at least this much (raw / compressed) to stay on.
pub const MIN_RATIO: f64 = 1.05;
/// Chunks compressed before deciding whether compression pays.
pub const SAMPLE_CHUNKS: u32 = 3;
/// Chunks sent raw after a failed sample before probing again (doubles up to the max).
const FIRST_BACKOFF: u32 = 16;
const MAX_BACKOFF: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Compressing a sample of `left` more chunks.
    Sampling { left: u32 },
    /// Compressing; the sample paid off.
    On,
    /// Sending raw for `left` more chunks.
    Off { left: u32 },
}

/// Decides per chunk whether to compress, and does it.
pub struct AdaptiveCompressor {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    adaptive: bool,
    mode: Mode,
    backoff: u32,
    sample_raw: u64,
    sample_compressed: u64,
}

impl AdaptiveCompressor {
    /// `level` is a zstd level; `enabled = false` never compresses; `adaptive = false`
    /// compresses every chunk (still sending raw when that is smaller).
    pub fn new(enabled: bool, level: i32, adaptive: bool) -> Self {
        let compressor = if enabled {
            zstd::bulk::Compressor::new(level).ok()
        } else {
            None
        };
        Self {
            compressor,
            adaptive,
            mode: Mode::Sampling {
                left: SAMPLE_CHUNKS,
            },
            backoff: FIRST_BACKOFF,
            sample_raw: 0,
            sample_compressed: 0,
        }
    }

    /// Returns the compressed form of `raw` if it should be sent compressed.
    pub fn compress(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        let compressor = self.compressor.as_mut()?;
        if raw.is_empty() {
            return None;
        }
        if self.adaptive {
            if let Mode::Off { left } = &mut self.mode {
                *left -= 1;
                if *left == 0 {
                    self.mode = Mode::Sampling { left: 1 };
                }
                return None;
            }
        }
        // Output may not exceed the input: anything larger is sent raw anyway.
        let mut out = Vec::with_capacity(raw.len());
        let compressed = compressor
            .compress_to_buffer(raw, &mut out)
            .ok()
            .map(|_| out);
        let compressed_len = compressed.as_ref().map_or(raw.len(), Vec::len);
        if self.adaptive {
            self.observe(raw.len(), compressed_len);
        }
        compressed.filter(|c| c.len() < raw.len())
    }

    fn observe(&mut self, raw: usize, compressed: usize) {
        let Mode::Sampling { left } = self.mode else {
            return;
        };
        self.sample_raw += raw as u64;
        self.sample_compressed += compressed as u64;
        if left > 1 {
            self.mode = Mode::Sampling { left: left - 1 };
            return;
        }
        let ratio = self.sample_raw as f64 / self.sample_compressed.max(1) as f64;
        self.sample_raw = 0;
        self.sample_compressed = 0;
        if ratio >= MIN_RATIO {
            self.mode = Mode::On;
            self.backoff = FIRST_BACKOFF;
        } else {
            self.mode = Mode::Off { left: self.backoff };
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Whether the compressor currently skips compression (for logs and tests).
    pub fn is_paused(&self) -> bool {
        matches!(self.mode, Mode::Off { .. })
    }
}

/// Why a compressed chunk was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecompressError {
    #[error("decompresses to more than the {expected} bytes the chunk may hold")]
    TooLarge { expected: usize },
    #[error("decompresses to {got} bytes, expected exactly {expected}")]
    WrongSize { got: usize, expected: usize },
    #[error("not a valid zstd frame: {0}")]
    Invalid(String),
}

/// Decompresses one chunk that must be exactly `expected` bytes. Never allocates more
/// than `expected` bytes, whatever the frame claims.
pub fn decompress_exact(data: &[u8], expected: usize) -> Result<Vec<u8>, DecompressError> {
    // A zstd frame may declare its content size; check it before doing any work.
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(data) {
        if declared > expected as u64 {
            return Err(DecompressError::TooLarge { expected });
        }
    }
    let mut out = Vec::with_capacity(expected);
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| DecompressError::Invalid(e.to_string()))?;
    match decompressor.decompress_to_buffer(data, &mut out) {
        Ok(n) if n == expected => Ok(out),
        Ok(n) => Err(DecompressError::WrongSize { got: n, expected }),
        // zstd reports "Destination buffer is too small" when the output would overflow.
        Err(e) if e.to_string().contains("too small") => {
            Err(DecompressError::TooLarge { expected })
        }
        Err(e) => Err(DecompressError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_compresses_and_round_trips() {
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(2000);
        let mut c = AdaptiveCompressor::new(true, 3, true);
        let packed = c.compress(&text).expect("text compresses");
        assert!(packed.len() * 10 < text.len());
        assert_eq!(decompress_exact(&packed, text.len()).unwrap(), text);
    }

    #[test]
    fn incompressible_data_switches_compression_off_then_probes_again() {
        let mut c = AdaptiveCompressor::new(true, 3, true);
        for i in 0..SAMPLE_CHUNKS {
            assert!(c.compress(&random(64 * 1024, i as u64 + 1)).is_none());
        }
        assert!(c.is_paused());
        for i in 0..FIRST_BACKOFF {
            assert!(c.compress(&random(1024, i as u64 + 100)).is_none());
        }
        assert!(!c.is_paused(), "probes again after the backoff");
        let text = b"abcabcabcabc".repeat(1000);
        assert!(c.compress(&text).is_some(), "compressible data turns it on");
    }

    #[test]
    fn a_bomb_is_rejected_without_allocating_its_size() {
        let big = vec![0u8; 64 * 1024 * 1024];
        let bomb = zstd::bulk::compress(&big, 3).unwrap();
        assert!(bomb.len() < 64 * 1024);
        let err = decompress_exact(&bomb, 1024 * 1024).unwrap_err();
        assert_eq!(
            err,
            DecompressError::TooLarge {
                expected: 1024 * 1024
            }
        );
    }

    #[test]
    fn a_bomb_without_declared_size_is_rejected_too() {
        let big = vec![0u8; 8 * 1024 * 1024];
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &big).unwrap();
        let bomb = enc.finish().unwrap();
        let err = decompress_exact(&bomb, 4096).unwrap_err();
        assert!(matches!(err, DecompressError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn short_output_and_garbage_are_rejected() {
        let packed = zstd::bulk::compress(&[1u8; 100], 3).unwrap();
        assert_eq!(
            decompress_exact(&packed, 200).unwrap_err(),
            DecompressError::WrongSize {
                got: 100,
                expected: 200
            }
        );
        assert!(matches!(
            decompress_exact(b"not zstd at all", 10),
            Err(DecompressError::Invalid(_))
        ));
    }
}
