//! The bytes `/metrics` serves, plain and gzipped, assembled ahead of scrapes.
//!
//! The inventory part is large and changes once per refresh; the exporter's own metrics are
//! small and change often. The inventory is compressed once per snapshot, thoroughly, into
//! a gzip header plus deflate blocks ending at a byte-aligned sync point; assembling then
//! only compresses the small tail and appends the gzip trailer (a CRC-32 of the whole
//! text, which costs far less than compressing it). The result is one ordinary
//! single-member gzip stream. Each encoding is kept as two shared buffers, head and tail,
//! so neither assembling nor serving copies the inventory.

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
    bytes: Bytes,
}

impl std::fmt::Debug for GzipPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GzipPrefix({} bytes)", self.bytes.len())
    }
}

impl GzipPrefix {
    pub fn new(data: &[u8]) -> GzipPrefix {
        // Once per snapshot, so worth the default level: at 10,000 keys it makes the
        // response a third smaller than the fastest level, for every scrape.
        // Exposition text compresses about twelvefold: sized so the output never regrows.
        let output = Vec::with_capacity(data.len() / 8 + 64);
        let mut encoder = DeflateEncoder::new(output, Compression::default());
        encoder
            .write_all(data)
            .expect("writing into memory cannot fail");
        // A sync flush ends the blocks on a byte boundary without marking the last one
        // final, so more blocks can follow.
        encoder.flush().expect("writing into memory cannot fail");
        let mut out = GZIP_HEADER.to_vec();
        out.append(encoder.get_mut());
        GzipPrefix {
            bytes: Bytes::from(out),
        }
    }
}

/// A response body in both encodings, each as head and tail.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub plain: [Bytes; 2],
    pub gzip: [Bytes; 2],
}

impl Exposition {
    /// `head` (with `head_gzip` made from it by `GzipPrefix::new`) followed by `tail`.
    pub fn assemble(head: &Bytes, head_gzip: &GzipPrefix, tail: Vec<u8>) -> Exposition {
        // The tail is small and changes every few seconds: the fastest level.
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
        encoder
            .write_all(&tail)
            .expect("writing into memory cannot fail");
        let mut tail_gzip = encoder.finish().expect("writing into memory cannot fail");
        let mut crc = Crc::new();
        crc.update(head);
        crc.update(&tail);
        tail_gzip.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        tail_gzip.extend_from_slice(&((head.len() + tail.len()) as u32).to_le_bytes());
        Exposition {
            plain: [head.clone(), Bytes::from(tail)],
            gzip: [head_gzip.bytes.clone(), Bytes::from(tail_gzip)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn joined(parts: &[Bytes; 2]) -> Vec<u8> {
        [&parts[0][..], &parts[1][..]].concat()
    }

    fn gunzip(parts: &[Bytes; 2]) -> Vec<u8> {
        // The single-member decoder: the stream must be one gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&joined(parts)[..])
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn assembled_gzip_is_one_valid_member_equal_to_the_plain_text() {
        let head = Bytes::from(b"aws_iam_access_key_active{user=\"alice\"} 1\n".repeat(5_000));
        let tail = b"iam_key_exporter_refresh_success 1\nprocess_open_fds 9\n".to_vec();
        let prefix = GzipPrefix::new(&head);
        let exposition = Exposition::assemble(&head, &prefix, tail.clone());
        assert_eq!(joined(&exposition.plain), [&head[..], &tail[..]].concat());
        assert_eq!(gunzip(&exposition.gzip), joined(&exposition.plain));
        assert!(
            joined(&exposition.gzip).len() * 10 < head.len(),
            "compressed"
        );
        assert_eq!(
            exposition.plain[0].as_ptr(),
            head.as_ptr(),
            "the head is shared, not copied"
        );
    }

    #[test]
    fn empty_parts_still_make_valid_gzip() {
        for (head, tail) in [("", "x 1\n"), ("y 2\n", ""), ("", "")] {
            let head = Bytes::from(head);
            let exposition = Exposition::assemble(&head, &GzipPrefix::new(&head), tail.into());
            assert_eq!(
                gunzip(&exposition.gzip),
                [&head[..], tail.as_bytes()].concat()
            );
        }
    }

    #[test]
    fn one_prefix_serves_many_tails() {
        let head = Bytes::from(b"a 1\nb 2\n".repeat(100));
        let prefix = GzipPrefix::new(&head);
        for n in 0..5 {
            let tail = format!("own_metric {n}\n");
            let exposition = Exposition::assemble(&head, &prefix, tail.clone().into_bytes());
            assert_eq!(
                gunzip(&exposition.gzip),
                [&head[..], tail.as_bytes()].concat()
            );
        }
    }
}
