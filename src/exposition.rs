//! The bytes `/metrics` serves, plain and gzipped, assembled ahead of scrapes.
//!
//! The inventory part is large and changes once per refresh; the exporter's own metrics are
//! small and change often. The inventory is compressed ahead, into a gzip header plus
//! deflate blocks ending at a byte-aligned sync point (`GzipPrefix`); assembling then only
//! compresses the small tail and appends the gzip trailer, whose CRC-32 of the whole text
//! is combined from the prefix's and the tail's without reading the text again. The result
//! is one ordinary single-member gzip stream. Each encoding is kept as two shared buffers,
//! head and tail, so neither assembling nor serving copies the inventory.
//!
//! A prefix is either compressed at once (`GzipPrefix::new`) or put together from pieces
//! compressed apart (`Deflater::piece`, `GzipBuilder`): a deflate stream that refers to
//! nothing before it and ends at a sync point can follow any other, so pieces compressed
//! once can be reordered and joined by copying them. Joining writes into buffers of
//! earlier snapshots that no response holds any more (`Recycler`): a fresh buffer of tens
//! of megabytes costs more in page faults than copying into it.

use std::io::Write;

use std::sync::Arc;

use bytes::Bytes;
use flate2::write::DeflateEncoder;
use flate2::{Compress, Compression, Crc, FlushCompress};

/// A gzip header: magic, deflate, no flags, no modification time, no extra flags,
/// operating system "unknown" (RFC 1952).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// The start of a gzip stream: header and deflate blocks for `data`, not yet final, and
/// the CRC-32 of `data`.
#[derive(Clone)]
pub struct GzipPrefix {
    bytes: Bytes,
    crc: Arc<Crc>,
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
        let mut crc = Crc::new();
        crc.update(data);
        GzipPrefix {
            bytes: Bytes::from(out),
            crc: Arc::new(crc),
        }
    }

    /// The compressed bytes, gzip header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Compresses text in pieces that can be joined in any order: each piece is a deflate
/// stream of its own (no back-reference before its start) ending at a byte-aligned sync
/// point, not final. One `Deflater` serves many pieces without reallocating.
pub struct Deflater(Compress);

impl Deflater {
    pub fn new(level: Compression) -> Deflater {
        Deflater(Compress::new(level, false))
    }

    /// Appends `data`, compressed as a piece of its own, to `out`.
    pub fn piece(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.0.reset();
        loop {
            let read = self.0.total_in() as usize;
            out.reserve(64 + (data.len() - read) / 4);
            self.0
                .compress_vec(&data[read..], out, FlushCompress::Sync)
                .expect("compressing into memory cannot fail");
            // The flush is complete once it leaves room in the output (zlib's rule).
            if self.0.total_in() as usize == data.len() && out.len() < out.capacity() {
                return;
            }
        }
    }
}

/// A `GzipPrefix` joined from pieces made by `Deflater::piece`, each given with the CRC-32
/// of its text: the CRCs are combined, so the text is not read again.
pub struct GzipBuilder {
    out: Vec<u8>,
    crc: Crc,
}

impl GzipBuilder {
    /// Writes into `buffer` (emptied), with room for `capacity` bytes of pieces.
    pub fn new(mut buffer: Vec<u8>, capacity: usize) -> GzipBuilder {
        buffer.clear();
        buffer.reserve(GZIP_HEADER.len() + capacity);
        let mut out = buffer;
        out.extend_from_slice(&GZIP_HEADER);
        GzipBuilder {
            out,
            crc: Crc::new(),
        }
    }

    /// Appends a piece: `deflated` is `Deflater::piece` of a text whose CRC is `crc`.
    pub fn push(&mut self, deflated: &[u8], crc: &Crc) {
        self.out.extend_from_slice(deflated);
        self.crc.combine(crc);
    }

    /// The prefix, its buffer shared through `recycler`.
    pub fn finish(self, recycler: &mut Recycler) -> GzipPrefix {
        GzipPrefix {
            bytes: recycler.share(self.out),
            crc: Arc::new(self.crc),
        }
    }
}

/// Buffers of served bytes, taken back for new bytes once no snapshot or response holds
/// them. Only the last few are kept; a buffer a slow response still holds is let go
/// with it.
#[derive(Debug, Default)]
pub struct Recycler {
    kept: Vec<Arc<Vec<u8>>>,
}

/// A buffer as `Bytes` hold it, so the recycler sees when they are all dropped.
struct Owned(Arc<Vec<u8>>);

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Recycler {
    /// Two snapshots (the one being served and the one before), plain and gzip.
    const KEPT: usize = 4;

    /// An empty buffer with room for `capacity` bytes: the smallest free one that has it,
    /// else the largest free one, else a new one.
    pub fn take(&mut self, capacity: usize) -> Vec<u8> {
        let free = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, buffer)| Arc::strong_count(buffer) == 1)
            .map(|(i, buffer)| (i, buffer.capacity()))
            .min_by_key(|&(_, room)| (room < capacity, room.abs_diff(capacity)));
        let mut buffer = free
            .and_then(|(i, _)| Arc::into_inner(self.kept.swap_remove(i)))
            .unwrap_or_default();
        buffer.clear();
        buffer.reserve(capacity);
        buffer
    }

    /// `buffer` as `Bytes`, kept to be taken again once they are all dropped.
    pub fn share(&mut self, buffer: Vec<u8>) -> Bytes {
        let buffer = Arc::new(buffer);
        if self.kept.len() == Self::KEPT {
            self.kept.remove(0);
        }
        self.kept.push(buffer.clone());
        Bytes::from_owner(Owned(buffer))
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
        debug_assert_eq!(
            head_gzip.crc.amount(),
            head.len() as u32,
            "a prefix of `head`"
        );
        let mut tail_crc = Crc::new();
        tail_crc.update(&tail);
        let mut crc = Crc::new();
        crc.combine(&head_gzip.crc);
        crc.combine(&tail_crc);
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

    /// Pieces compressed apart, joined in another order than they were made in, with an
    /// empty one and one larger than any buffer the deflater starts with.
    #[test]
    fn pieces_compressed_apart_join_into_one_valid_member_in_any_order() {
        let texts: Vec<Vec<u8>> = vec![
            b"aws_iam_access_key_active{user=\"alice\"} 1\n".repeat(3),
            Vec::new(),
            (0..200_000u32)
                .flat_map(|n| {
                    format!("m{{n=\"{}\"}} {n}\n", n.wrapping_mul(2_654_435_761)).into_bytes()
                })
                .collect(),
            b"aws_iam_access_key_active{user=\"bob\"} 0\n".to_vec(),
        ];
        let mut deflater = Deflater::new(Compression::best());
        let pieces: Vec<(Vec<u8>, Crc)> = texts
            .iter()
            .map(|text| {
                let mut deflated = Vec::new();
                deflater.piece(text, &mut deflated);
                let mut crc = Crc::new();
                crc.update(text);
                (deflated, crc)
            })
            .collect();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut builder = GzipBuilder::new(Vec::new(), 0);
            for &i in &order {
                builder.push(&pieces[i].0, &pieces[i].1);
            }
            let prefix = builder.finish(&mut Recycler::default());
            let head = Bytes::from(order.map(|i| &texts[i][..]).concat());
            let exposition = Exposition::assemble(&head, &prefix, b"own 1\n".to_vec());
            assert_eq!(gunzip(&exposition.gzip), [&head[..], b"own 1\n"].concat());
        }
        assert!(pieces[2].0.len() * 2 < texts[2].len(), "compressed");
    }

    #[test]
    fn a_buffer_is_taken_again_only_once_nothing_holds_it() {
        let mut recycler = Recycler::default();
        let first = recycler.share(vec![1; 1000]);
        let address = first.as_ptr();
        let held = recycler.take(10);
        assert_ne!(held.as_ptr(), address, "still served");
        let copy = first.clone();
        drop(first);
        let other = recycler.take(10);
        assert_ne!(other.as_ptr(), address, "a response holds it");
        drop(copy);
        let again = recycler.take(10);
        assert_eq!(
            (again.as_ptr(), again.len()),
            (address, 0),
            "free: reused, empty"
        );
        assert!(again.capacity() >= 1000);

        // The best fit among free buffers, else the largest; never more kept than `KEPT`.
        let mut recycler = Recycler::default();
        for size in [10, 5000, 100_000] {
            drop(recycler.share(vec![0; size]));
        }
        assert_eq!(recycler.take(4000).capacity(), 5000);
        let grown = recycler.take(200_000);
        assert!(grown.capacity() >= 200_000);
        assert_eq!(recycler.take(1).capacity(), 10);
        for _ in 0..10 {
            drop(recycler.share(vec![0; 10]));
        }
        assert_eq!(recycler.kept.len(), Recycler::KEPT);
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
