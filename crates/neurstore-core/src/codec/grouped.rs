//! Byte-grouped, chunked coding: the lossless codec for standalone tensors and plain files.
//!
//! The input is cut into chunks of `CHUNK_LEN` bytes (a multiple of the plane width `w`). Within a
//! chunk, byte `k` of every `w`-byte element goes to plane `k`, so for floats the sign/exponent
//! bytes (low entropy) sit apart from the mantissa bytes (close to random). Each plane is stored
//! raw, zstd compressed or coded by the order-0 entropy coder ([`super::entropy`]), whichever is
//! smallest, a coded form only where it saves more than 1/64 of the plane. For floats the encoder
//! may first rotate each little-endian word left by one bit, moving the sign bit to the bottom so
//! the top byte holds exponent bits only (ZipNN's trick): the exponent plane then compresses
//! further and the sign joins the mantissa bytes, which are close to random anyway.
//!
//! Layout (all integers little-endian):
//! ```text
//! u8  version = 1
//! u8  plane width w (1, 2, 4 or 8)
//! u8  flags: bit 0 = words rotated left by one bit before grouping (w > 1); other bits 0
//! u32 chunk length in bytes (multiple of w, > 0)
//! u64 raw length
//! u32 chunk count = ceil(raw length / chunk length)
//! chunk count * w entries of { u8 mode (0 raw, 1 zstd, 2 entropy coded), u32 stored length }
//! the plane payloads, in entry order
//! ```
//! **Invariant:** decoding never allocates more than the caller's output buffer plus one chunk.

use rayon::prelude::*;

use super::{CodecError, entropy};

const VERSION: u8 = 1;
/// Chunk size: large enough for zstd to find structure, small enough to spread over cores.
pub const CHUNK_LEN: usize = 1 << 20;
const FIXED_HEADER: usize = 1 + 1 + 1 + 4 + 8 + 4;
const ROTATED: u8 = 1;
const ENTRY: usize = 1 + 4;
const MODE_RAW: u8 = 0;
const MODE_ZSTD: u8 = 1;
const MODE_ENTROPY: u8 = 2;
/// Bytes of a large plane that zstd compresses to decide whether to try it on the whole plane.
const ZSTD_SAMPLE: usize = 32 << 10;

/// Encodes `raw` grouping bytes in planes of width `plane_width` (1 disables grouping).
pub fn encode(raw: &[u8], plane_width: usize, level: i32) -> Vec<u8> {
    encode_with(raw, plane_width, false, level)
}

/// Like [`encode`]; with `rotate_sign`, each word is rotated left by one bit first (for floats).
pub fn encode_with(raw: &[u8], plane_width: usize, rotate_sign: bool, level: i32) -> Vec<u8> {
    let w = if matches!(plane_width, 2 | 4 | 8) && raw.len().is_multiple_of(plane_width) {
        plane_width
    } else {
        1
    };
    let rotate = rotate_sign && w > 1;
    let chunk_len = CHUNK_LEN - CHUNK_LEN % w;
    let chunks: Vec<Vec<(u8, Vec<u8>)>> = raw
        .par_chunks(chunk_len)
        .map(|chunk| {
            let rotated;
            let chunk = if rotate {
                let mut copy = chunk.to_vec();
                rotate_words_left(&mut copy, w);
                rotated = copy;
                &rotated[..]
            } else {
                chunk
            };
            split_planes(chunk, w)
                .into_iter()
                .map(|plane| encode_plane(plane, level))
                .collect()
        })
        .collect();
    let payload: usize = chunks.iter().flatten().map(|(_, p)| p.len()).sum();
    let mut out = Vec::with_capacity(FIXED_HEADER + chunks.len() * w * ENTRY + payload);
    out.push(VERSION);
    out.push(w as u8);
    out.push(if rotate { ROTATED } else { 0 });
    out.extend_from_slice(&(chunk_len as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for (mode, plane) in chunks.iter().flatten() {
        out.push(*mode);
        out.extend_from_slice(&(plane.len() as u32).to_le_bytes());
    }
    for (_, plane) in chunks.iter().flatten() {
        out.extend_from_slice(plane);
    }
    out
}

/// Decodes `stored` into `out`, whose length must be the raw length recorded at encode time.
pub fn decode_into(stored: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let layout = Layout::parse(stored, out.len() as u64)?;
    out.par_chunks_mut(layout.chunk_len)
        .zip(layout.chunks.par_iter())
        .try_for_each(|(dst, planes)| decode_chunk(&layout, stored, planes, dst))
}

/// A grouped blob parsed once, for decoding byte ranges of it chunk by chunk (streamed export of
/// large tensors) without decoding the chunks outside each range.
pub struct Ranged<'a> {
    stored: &'a [u8],
    layout: Layout,
    raw_len: u64,
}

impl<'a> Ranged<'a> {
    /// Parses and checks `stored`, which must describe `raw_len` raw bytes.
    pub fn new(stored: &'a [u8], raw_len: u64) -> Result<Self, CodecError> {
        Ok(Ranged {
            layout: Layout::parse(stored, raw_len)?,
            stored,
            raw_len,
        })
    }

    /// The alignment of a range start: the chunk length.
    pub fn align(&self) -> usize {
        self.layout.chunk_len
    }

    /// The raw length the blob describes.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    /// Decodes raw bytes `start..start + out.len()`; `start` must be a multiple of
    /// [`Ranged::align`], and the end one too or the end of the data.
    pub fn decode_range(&self, start: u64, out: &mut [u8]) -> Result<(), CodecError> {
        let chunk = self.layout.chunk_len as u64;
        let end = start
            .checked_add(out.len() as u64)
            .filter(|&e| e <= self.raw_len)
            .ok_or_else(|| CodecError::corrupt("range past the end of the data"))?;
        if !start.is_multiple_of(chunk) || !(end.is_multiple_of(chunk) || end == self.raw_len) {
            return Err(CodecError::corrupt("range not aligned to chunks"));
        }
        let first = (start / chunk) as usize;
        let count = out.len().div_ceil(self.layout.chunk_len);
        out.par_chunks_mut(self.layout.chunk_len)
            .zip(self.layout.chunks[first..first + count].par_iter())
            .try_for_each(|(dst, planes)| decode_chunk(&self.layout, self.stored, planes, dst))
    }
}

fn decode_chunk(
    layout: &Layout,
    stored: &[u8],
    planes: &[(u8, usize, usize)],
    dst: &mut [u8],
) -> Result<(), CodecError> {
    let w = layout.plane_width;
    let plane_len = dst.len() / w;
    if w == 1 {
        let &(mode, start, len) = &planes[0];
        return decode_plane(mode, &stored[start..start + len], dst);
    }
    // zstd planes are decoded into per-thread scratch (reused, never zeroed: every byte used
    // is written first); raw planes are merged straight from the blob.
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < dst.len() {
            scratch.resize(dst.len(), 0);
        }
        let scratch = &mut scratch[..dst.len()];
        for (k, (&(mode, start, len), target)) in planes
            .iter()
            .zip(scratch.chunks_exact_mut(plane_len))
            .enumerate()
        {
            if mode != MODE_RAW {
                decode_plane(mode, &stored[start..start + len], target)?;
            } else if len != plane_len {
                return Err(CodecError::corrupt(format!(
                    "raw plane {k} length disagrees with chunk"
                )));
            }
        }
        let sources: Vec<&[u8]> = planes
            .iter()
            .zip(scratch.chunks_exact(plane_len))
            .map(|(&(mode, start, len), decoded)| {
                if mode == MODE_RAW {
                    &stored[start..start + len]
                } else {
                    decoded
                }
            })
            .collect();
        merge_planes(&sources, dst, w, layout.rotated);
        Ok(())
    })
}

thread_local! {
    /// Plane scratch of the chunk being decoded on this thread.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A zstd compression context per thread, reused across planes.
    static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// A zstd decompression context per thread, reused across planes.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decodes one plane payload into `target` (whose length is the plane's).
fn decode_plane(mode: u8, src: &[u8], target: &mut [u8]) -> Result<(), CodecError> {
    match mode {
        MODE_RAW if src.len() == target.len() => {
            target.copy_from_slice(src);
            Ok(())
        }
        MODE_RAW => Err(CodecError::corrupt("raw plane length disagrees with chunk")),
        MODE_ENTROPY => entropy::decode(src, target),
        _ => {
            let n = DCTX
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    d.as_mut()
                        .expect("set above")
                        .decompress_to_buffer(src, target)
                })
                .map_err(|e| CodecError::corrupt(format!("zstd plane: {e}")))?;
            if n == target.len() {
                Ok(())
            } else {
                Err(CodecError::corrupt(
                    "zstd plane decoded to the wrong length",
                ))
            }
        }
    }
}

/// Validated positions of every plane payload.
struct Layout {
    plane_width: usize,
    rotated: bool,
    chunk_len: usize,
    /// Per chunk, per plane: (mode, payload start, payload length).
    chunks: Vec<Vec<(u8, usize, usize)>>,
}

impl Layout {
    fn parse(stored: &[u8], raw_len: u64) -> Result<Self, CodecError> {
        let header = stored
            .get(..FIXED_HEADER)
            .ok_or_else(|| CodecError::corrupt("grouped header truncated"))?;
        if header[0] != VERSION {
            return Err(CodecError::corrupt(format!(
                "unknown grouped codec version {}",
                header[0]
            )));
        }
        let w = header[1] as usize;
        let flags = header[2];
        let chunk_len = u32::from_le_bytes(header[3..7].try_into().unwrap()) as usize;
        let declared_raw = u64::from_le_bytes(header[7..15].try_into().unwrap());
        let count = u32::from_le_bytes(header[15..19].try_into().unwrap()) as u64;
        if flags & !ROTATED != 0 || (flags == ROTATED && w == 1) {
            return Err(CodecError::corrupt(format!("bad grouped flags {flags}")));
        }
        if !matches!(w, 1 | 2 | 4 | 8) || chunk_len == 0 || !chunk_len.is_multiple_of(w) {
            return Err(CodecError::corrupt("bad plane width or chunk length"));
        }
        if declared_raw != raw_len || !raw_len.is_multiple_of(w as u64) {
            return Err(CodecError::corrupt(format!(
                "declares {declared_raw} raw bytes, catalog expects {raw_len}"
            )));
        }
        if count != raw_len.div_ceil(chunk_len as u64) {
            return Err(CodecError::corrupt(
                "chunk count disagrees with the raw length",
            ));
        }
        // The entry table must fit in the stored bytes before anything is sized by `count`.
        let table_len = (count as usize)
            .checked_mul(w * ENTRY)
            .filter(|&n| n <= stored.len() - FIXED_HEADER)
            .ok_or_else(|| CodecError::corrupt("entry table runs past the blob"))?;
        let table = &stored[FIXED_HEADER..FIXED_HEADER + table_len];
        let mut pos = FIXED_HEADER + table_len;
        let mut entries = table.chunks_exact(ENTRY);
        let mut chunks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let mut planes = Vec::with_capacity(w);
            for _ in 0..w {
                let e = entries.next().expect("table sized above");
                let len = u32::from_le_bytes(e[1..5].try_into().unwrap()) as usize;
                if e[0] > MODE_ENTROPY {
                    return Err(CodecError::corrupt(format!("unknown plane mode {}", e[0])));
                }
                if len > stored.len() - pos {
                    return Err(CodecError::corrupt("plane payload runs past the blob"));
                }
                planes.push((e[0], pos, len));
                pos += len;
            }
            chunks.push(planes);
        }
        if pos != stored.len() {
            return Err(CodecError::corrupt(format!(
                "{} trailing bytes",
                stored.len() - pos
            )));
        }
        Ok(Layout {
            rotated: flags == ROTATED,
            plane_width: w,
            chunk_len,
            chunks,
        })
    }
}

/// Chooses how to store one plane: raw, zstd or the order-0 entropy coder, whichever is
/// smallest, keeping a coded form only when it saves more than 1/64 of the plane.
///
/// The byte histogram decides most planes without trying zstd: past 7.9 bits of order-0
/// entropy neither coder can save 1/64 (the low mantissa bytes of trained weights); otherwise
/// the entropy coder's size follows from the histogram (within 64 bytes), and zstd is run where
/// [`zstd_may_win`] says matches could beat order-0 coding.
fn encode_plane(plane: Vec<u8>, level: i32) -> (u8, Vec<u8>) {
    let worth = |len: usize| len + plane.len() / 64 < plane.len();
    let counts = entropy::histogram(&plane);
    if plane.len() >= 4096 && entropy::entropy_bits(&counts) > 7.9 {
        return (MODE_RAW, plane);
    }
    let rans_len = entropy::estimated_len(&counts);
    let mut best = (MODE_RAW, plane.len());
    if worth(rans_len) {
        best = (MODE_ENTROPY, rans_len);
    }
    let zstd = if zstd_may_win(&plane, best.1, level) {
        zstd_compress(&plane, level).filter(|z| worth(z.len()) && z.len() < best.1)
    } else {
        None
    };
    match (zstd, best.0) {
        (Some(z), _) => (MODE_ZSTD, z),
        (None, MODE_ENTROPY) => {
            let mut out = Vec::with_capacity(rans_len + 64);
            entropy::encode_counted(&plane, &counts, &mut out);
            (MODE_ENTROPY, out)
        }
        (None, _) => (MODE_RAW, plane),
    }
}

/// Whether zstd could store `plane` in fewer than `target_len` bytes (the best other choice's
/// length): always tried on planes of
/// up to `4 * ZSTD_SAMPLE` bytes, where it is cheap and the entropy coder's table weighs most;
/// on larger ones only when zstd compresses a sample from the middle of the plane to within
/// 2% of the target's rate for the whole plane (matches pay only on repetitive data, and zstd
/// does a little better on the whole plane than on a sample).
fn zstd_may_win(plane: &[u8], target_len: usize, level: i32) -> bool {
    if plane.len() <= 4 * ZSTD_SAMPLE {
        return true;
    }
    let start = (plane.len() - ZSTD_SAMPLE) / 2;
    let Some(sample) = zstd_compress(&plane[start..start + ZSTD_SAMPLE], level) else {
        return false;
    };
    (sample.len() as f64 / ZSTD_SAMPLE as f64) < 1.02 * (target_len as f64 / plane.len() as f64)
}

/// zstd at `level` through this thread's reused compression context; `None` if zstd fails.
fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(level).ok()?);
        }
        let c = c.as_mut().expect("set above");
        c.set_compression_level(level).ok()?;
        c.compress(data).ok()
    })
}

/// Rotates every little-endian `w`-byte word of `bytes` left by one bit (the encoder's side;
/// the decoder undoes it while merging planes).
fn rotate_words_left(bytes: &mut [u8], w: usize) {
    macro_rules! rotate {
        ($t:ty, $n:expr) => {
            for word in bytes.chunks_exact_mut($n) {
                let x = <$t>::from_le_bytes(word.try_into().unwrap());
                word.copy_from_slice(&x.rotate_left(1).to_le_bytes());
            }
        };
    }
    match w {
        2 => rotate!(u16, 2),
        4 => rotate!(u32, 4),
        8 => rotate!(u64, 8),
        _ => {}
    }
}

fn split_planes(chunk: &[u8], w: usize) -> Vec<Vec<u8>> {
    if w == 1 {
        return vec![chunk.to_vec()];
    }
    let n = chunk.len() / w;
    let mut planes = vec![vec![0u8; n]; w];
    match w {
        2 => split_fixed::<2>(chunk, &mut planes),
        4 => split_fixed::<4>(chunk, &mut planes),
        _ => split_fixed::<8>(chunk, &mut planes),
    }
    planes
}

fn split_fixed<const W: usize>(chunk: &[u8], planes: &mut [Vec<u8>]) {
    for (k, plane) in planes.iter_mut().enumerate() {
        for (dst, elem) in plane.iter_mut().zip(chunk.chunks_exact(W)) {
            *dst = elem[k];
        }
    }
}

/// Interleaves `w` planes (each `dst.len() / w` bytes) into `dst`, undoing the sign rotation
/// on the way when `rotated`.
fn merge_planes(planes: &[&[u8]], dst: &mut [u8], w: usize, rotated: bool) {
    match (w, rotated) {
        (2, false) => merge::<2, false>(planes, dst),
        (2, true) => merge::<2, true>(planes, dst),
        (4, false) => merge::<4, false>(planes, dst),
        (4, true) => merge::<4, true>(planes, dst),
        (_, false) => merge::<8, false>(planes, dst),
        (_, true) => merge::<8, true>(planes, dst),
    }
}

/// One pass over `LANES` elements at a time (fixed-length chunks: no bounds checks in the inner
/// loop), then the tail.
fn merge<const W: usize, const ROTATED: bool>(planes: &[&[u8]], dst: &mut [u8]) {
    const LANES: usize = 64;
    #[inline(always)]
    fn word<const W: usize, const ROTATED: bool>(bytes: [u8; W], out: &mut [u8]) {
        let mut b = [0u8; 8];
        b[..W].copy_from_slice(&bytes);
        let mut x = u64::from_le_bytes(b);
        if ROTATED {
            // Rotate right by one bit within a W-byte word.
            let bits = 8 * W as u32;
            let mask = if W == 8 { u64::MAX } else { (1u64 << bits) - 1 };
            x = ((x >> 1) | (x << (bits - 1))) & mask;
        }
        out.copy_from_slice(&x.to_le_bytes()[..W]);
    }
    let planes: [&[u8]; W] = std::array::from_fn(|k| planes[k]);
    let n = dst.len() / W;
    let body = n - n % LANES;
    let (dst_body, dst_tail) = dst.split_at_mut(body * W);
    for (i, out) in dst_body.chunks_exact_mut(LANES * W).enumerate() {
        let src: [&[u8]; W] = std::array::from_fn(|k| &planes[k][i * LANES..(i + 1) * LANES]);
        for j in 0..LANES {
            word::<W, ROTATED>(
                std::array::from_fn(|k| src[k][j]),
                &mut out[j * W..(j + 1) * W],
            );
        }
    }
    for (j, out) in dst_tail.chunks_exact_mut(W).enumerate() {
        word::<W, ROTATED>(std::array::from_fn(|k| planes[k][body + j]), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(raw: &[u8], w: usize) {
        let enc = encode(raw, w, 3);
        let mut out = vec![0u8; raw.len()];
        decode_into(&enc, &mut out).unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn round_trips_across_chunk_boundaries() {
        let raw: Vec<u8> = (0..(CHUNK_LEN * 2 + 12))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for w in [1, 2, 4, 8] {
            round_trip(&raw, w);
        }
        round_trip(&[], 4);
        round_trip(&[1, 2, 3], 4); // not a multiple of w: falls back to w = 1
    }

    #[test]
    fn groups_float_bytes_to_compress() {
        let raw: Vec<u8> = (0..100_000)
            .flat_map(|i| ((i as f32).sin() * 0.05).to_le_bytes())
            .collect();
        let grouped = encode(&raw, 4, 3).len();
        let plain = encode(&raw, 1, 3).len();
        assert!(grouped < plain, "grouped {grouped} vs plain {plain}");
    }

    #[test]
    fn rejects_damaged_blobs() {
        let raw: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 17).to_le_bytes())
            .collect();
        let enc = encode(&raw, 4, 3);
        let mut out = vec![0u8; raw.len()];
        assert!(decode_into(&enc[..enc.len() - 1], &mut out).is_err());
        let mut wrong_len = vec![0u8; raw.len() + 4];
        assert!(decode_into(&enc, &mut wrong_len).is_err());
        let mut bad = enc.clone();
        bad[0] = 9;
        assert!(decode_into(&bad, &mut out).is_err());
        // A chunk count claiming billions of chunks must fail before allocating for them.
        let mut bomb = enc.clone();
        bomb[15..19].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_into(&bomb, &mut out).is_err());
    }

    #[test]
    fn ranges_decode_like_the_whole() {
        let raw: Vec<u8> = (0..(CHUNK_LEN * 3 + 100) as u32)
            .map(|i| (i % 253) as u8 ^ (i >> 12) as u8)
            .collect();
        let enc = encode_with(&raw, 4, true, 1);
        let r = Ranged::new(&enc, raw.len() as u64).unwrap();
        assert_eq!(r.align(), CHUNK_LEN);
        for (start, len) in [
            (0, CHUNK_LEN),
            (CHUNK_LEN, 2 * CHUNK_LEN),
            (3 * CHUNK_LEN, 100),
            (0, raw.len()),
        ] {
            let mut out = vec![0u8; len];
            r.decode_range(start as u64, &mut out).unwrap();
            assert_eq!(out, &raw[start..start + len]);
        }
        let mut out = vec![0u8; 10];
        assert!(r.decode_range(1, &mut out).is_err());
        assert!(r.decode_range(CHUNK_LEN as u64, &mut out).is_err());
        assert!(r.decode_range(3 * CHUNK_LEN as u64 + 96, &mut out).is_err());
    }

    /// Modes of every plane of a blob, chunk-major.
    fn modes(enc: &[u8], raw_len: usize) -> Vec<u8> {
        let layout = Layout::parse(enc, raw_len as u64).unwrap();
        layout.chunks.iter().flatten().map(|p| p.0).collect()
    }

    /// Float-like words: a skewed exponent byte over random low bytes, as in trained weights.
    fn weights(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .flat_map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let g = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let v = (g.ln() * -0.02) as f32 * if s & 1 == 0 { 1.0 } else { -1.0 };
                v.to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn exponent_planes_take_the_entropy_coder() {
        let raw = weights(CHUNK_LEN / 2, 5);
        let enc = encode_with(&raw, 4, true, 1);
        // Planes 0..2 of each chunk hold mantissa bits (raw); plane 3 the exponent.
        let m = modes(&enc, raw.len());
        assert!(m.chunks(4).all(|c| c[3] == MODE_ENTROPY), "modes {m:?}");
        let mut out = vec![0u8; raw.len()];
        decode_into(&enc, &mut out).unwrap();
        assert_eq!(out, raw);
        let r = Ranged::new(&enc, raw.len() as u64).unwrap();
        let mut part = vec![0u8; CHUNK_LEN];
        r.decode_range(CHUNK_LEN as u64, &mut part).unwrap();
        assert_eq!(part, &raw[CHUNK_LEN..2 * CHUNK_LEN]);
    }

    #[test]
    fn repetitive_planes_keep_zstd() {
        let raw: Vec<u8> = b"a plain file repeats itself; ".repeat(5000);
        let m = modes(&encode(&raw, 1, 3), raw.len());
        assert_eq!(m, vec![MODE_ZSTD]);
    }

    #[test]
    fn blobs_of_raw_and_zstd_planes_decode_as_before() {
        // A blob as the first encoder wrote it: one chunk of 2-byte words, plane 0 raw, plane 1
        // zstd.
        let raw: Vec<u8> = (0..1000u32).flat_map(|i| [(i * 37) as u8, 3]).collect();
        let plane0: Vec<u8> = raw.iter().step_by(2).copied().collect();
        let plane1 = zstd::bulk::compress(&[3u8; 1000], 1).unwrap();
        let mut blob = vec![1, 2, 0];
        blob.extend_from_slice(&(CHUNK_LEN as u32).to_le_bytes());
        blob.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        blob.extend_from_slice(&1u32.to_le_bytes());
        blob.push(MODE_RAW);
        blob.extend_from_slice(&(plane0.len() as u32).to_le_bytes());
        blob.push(MODE_ZSTD);
        blob.extend_from_slice(&(plane1.len() as u32).to_le_bytes());
        blob.extend_from_slice(&plane0);
        blob.extend_from_slice(&plane1);
        let mut out = vec![0u8; raw.len()];
        decode_into(&blob, &mut out).unwrap();
        assert_eq!(out, raw);
        // An unknown mode is refused.
        blob[FIXED_HEADER + ENTRY] = 3;
        assert!(decode_into(&blob, &mut out).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(raw in proptest::collection::vec(any::<u8>(), 0..5000), w in prop::sample::select(vec![1usize, 2, 4, 8])) {
            for rotate in [false, true] {
                let enc = encode_with(&raw, w, rotate, 1);
                let mut out = vec![0u8; raw.len()];
                decode_into(&enc, &mut out).unwrap();
                prop_assert_eq!(&out, &raw);
            }
        }

        #[test]
        fn decoder_is_total(stored in proptest::collection::vec(any::<u8>(), 0..200), len in 0usize..300) {
            let mut out = vec![0u8; len];
            let _ = decode_into(&stored, &mut out);
        }
    }
}
