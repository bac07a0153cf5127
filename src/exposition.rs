//! The bytes `/metrics` serves, plain and gzipped, assembled ahead of scrapes.
//!
//! The inventory part is large and changes once per refresh; the exporter's own metrics are
//! small and change often. The inventory is compressed once per snapshot into a gzip
//! header plus deflate blocks ending at a byte-aligned sync point; assembling a response
//! then only compresses the small tail and appends the gzip trailer (a CRC-32 of the whole
//! text, which costs far less than compressing it). The result is one ordinary
//! single-member gzip stream.

use std::io::Write;

use bytes::Bytes;
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

/// A gzip header: magic, deflate, no flags, no modification time, no extra flags,
/// operating system "unknown" (RFC 1952).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// The start of a gzip stream: header and deflate blocks for `data`, not yet final.
#[derive(Clone)]
pub struct GzipPrefix {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for GzipPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GzipPrefix({} bytes)", self.bytes.len())
    }
}

impl GzipPrefix {
    pub fn new(data: &[u8]) -> GzipPrefix {
        let mut encoder = DeflateEncoder::new(Vec::new(), fast());
        encoder
            .write_all(data)
            .expect("writing into memory cannot fail");
        // A sync flush ends the blocks on a byte boundary without marking the last one
        // final, so more blocks can follow.
        encoder.flush().expect("writing into memory cannot fail");
        let mut out = GZIP_HEADER.to_vec();
        out.append(encoder.get_mut());
        GzipPrefix { bytes: out }
    }
}

fn fast() -> Compression {
    // The fastest level: exposition text still compresses about tenfold.
    Compression::fast()
}

/// A response body in both encodings.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub plain: Bytes,
    pub gzip: Bytes,
}

impl Exposition {
    /// `head` (with `head_gzip` made from it by `GzipPrefix::new`) followed by `tail`.
    pub fn assemble(head: &[u8], head_gzip: &GzipPrefix, tail: &[u8]) -> Exposition {
        let mut plain = Vec::with_capacity(head.len() + tail.len());
        plain.extend_from_slice(head);
        plain.extend_from_slice(tail);

        let mut encoder = DeflateEncoder::new(Vec::new(), fast());
        encoder
            .write_all(tail)
            .expect("writing into memory cannot fail");
        let tail_blocks = encoder.finish().expect("writing into memory cannot fail");
        let mut crc = Crc::new();
        crc.update(&plain);

        let mut gzip = Vec::with_capacity(head_gzip.bytes.len() + tail_blocks.len() + 8);
        gzip.extend_from_slice(&head_gzip.bytes);
        gzip.extend_from_slice(&tail_blocks);
        gzip.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        gzip.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        Exposition {
            plain: Bytes::from(plain),
            gzip: Bytes::from(gzip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        // The single-member decoder: the stream must be one gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn assembled_gzip_is_one_valid_member_equal_to_the_plain_text() {
        let head = b"aws_iam_access_key_active{user=\"alice\"} 1\n".repeat(5_000);
        let tail = b"iam_key_exporter_refresh_success 1\nprocess_open_fds 9\n";
        let prefix = GzipPrefix::new(&head);
        let exposition = Exposition::assemble(&head, &prefix, tail);
        assert_eq!(&exposition.plain[..head.len()], &head[..]);
        assert_eq!(gunzip(&exposition.gzip), exposition.plain.to_vec());
        assert!(
            exposition.gzip.len() * 10 < exposition.plain.len(),
            "compressed"
        );
    }

    #[test]
    fn empty_parts_still_make_valid_gzip() {
        for (head, tail) in [
            (&b""[..], &b"x 1\n"[..]),
            (&b"y 2\n"[..], &b""[..]),
            (&b""[..], &b""[..]),
        ] {
            let exposition = Exposition::assemble(head, &GzipPrefix::new(head), tail);
            assert_eq!(gunzip(&exposition.gzip), [head, tail].concat());
        }
    }

    #[test]
    fn one_prefix_serves_many_tails() {
        let head = b"a 1\nb 2\n".repeat(100);
        let prefix = GzipPrefix::new(&head);
        for n in 0..5 {
            let tail = format!("own_metric {n}\n");
            let exposition = Exposition::assemble(&head, &prefix, tail.as_bytes());
            assert_eq!(
                gunzip(&exposition.gzip),
                [&head[..], tail.as_bytes()].concat()
            );
        }
    }
}
