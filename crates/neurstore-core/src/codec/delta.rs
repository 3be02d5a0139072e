//! Lossless delta: a tensor stored as the difference of its bit patterns against a base tensor
//! of the same dtype and element count, then byte-grouped and zstd coded ([`super::grouped`]).
//!
//! Three transforms of each `w`-byte word pair (target `t`, base `b`) are offered:
//! - `IntDiff`: `zigzag(t - b)` on the raw bit patterns, wrapping;
//! - `OrderedDiff`: the same after mapping float bit patterns to integers ordered like the
//!   values (`-x` below `+x`), so neighbours across zero stay close;
//! - `Xor`: `t ^ b`.
//!
//! Layout: `u8 version = 1`, `u8 transform`, `u8 word width w`, then a grouped blob of the
//! transformed words (plane width `w`). Bit-exact for any bytes, NaN payloads included.

use rayon::prelude::*;

use super::{CodecError, grouped};

const VERSION: u8 = 1;
const HEADER: usize = 3;

/// How target and base words are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Zig-zag of the wrapping integer difference of bit patterns.
    IntDiff,
    /// Zig-zag of the difference after an order-preserving float-to-integer map.
    OrderedDiff,
    /// Exclusive or of bit patterns.
    Xor,
}

impl Transform {
    fn tag(self) -> u8 {
        match self {
            Transform::IntDiff => 0,
            Transform::OrderedDiff => 1,
            Transform::Xor => 2,
        }
    }

    fn from_tag(t: u8) -> Result<Self, CodecError> {
        match t {
            0 => Ok(Transform::IntDiff),
            1 => Ok(Transform::OrderedDiff),
            2 => Ok(Transform::Xor),
            _ => Err(CodecError::corrupt(format!("unknown delta transform {t}"))),
        }
    }
}

/// Encodes `target` against `base` (equal lengths) with words of `width` bytes (1, 2, 4 or 8).
pub fn encode(
    target: &[u8],
    base: &[u8],
    width: usize,
    transform: Transform,
    level: i32,
) -> Vec<u8> {
    assert_eq!(target.len(), base.len(), "delta needs equal lengths");
    let w = if matches!(width, 1 | 2 | 4 | 8) && target.len().is_multiple_of(width) {
        width
    } else {
        1
    };
    let mut words = vec![0u8; target.len()];
    apply(w, transform, target, base, &mut words);
    let body = grouped::encode(&words, w, level);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&[VERSION, transform.tag(), w as u8]);
    out.extend_from_slice(&body);
    out
}

/// The transform and word width of a delta blob describing `raw_len` raw bytes.
fn parse_header(stored: &[u8], raw_len: u64) -> Result<(Transform, usize), CodecError> {
    let header = stored
        .get(..HEADER)
        .ok_or_else(|| CodecError::corrupt("delta header truncated"))?;
    if header[0] != VERSION {
        return Err(CodecError::corrupt(format!(
            "unknown delta version {}",
            header[0]
        )));
    }
    let transform = Transform::from_tag(header[1])?;
    let w = header[2] as usize;
    if !matches!(w, 1 | 2 | 4 | 8) || !raw_len.is_multiple_of(w as u64) {
        return Err(CodecError::corrupt(format!("bad delta word width {w}")));
    }
    Ok((transform, w))
}

/// Decodes `stored` against `base` into `out` (same length as `base`).
pub fn decode_into(stored: &[u8], base: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let (transform, w) = parse_header(stored, out.len() as u64)?;
    if base.len() != out.len() {
        return Err(CodecError::corrupt(format!(
            "base holds {} bytes, tensor {}",
            base.len(),
            out.len()
        )));
    }
    grouped::decode_into(&stored[HEADER..], out)?;
    out.par_chunks_mut(BLOCK)
        .zip(base.par_chunks(BLOCK))
        .for_each(|(out, base)| undo(w, transform, base, out));
    Ok(())
}

/// A delta blob parsed once, for decoding byte ranges of it against the same ranges of its base
/// (streamed export of large tensors).
pub struct Ranged<'a> {
    transform: Transform,
    w: usize,
    words: grouped::Ranged<'a>,
}

impl<'a> Ranged<'a> {
    /// Parses and checks `stored`, which must describe `raw_len` raw bytes.
    pub fn new(stored: &'a [u8], raw_len: u64) -> Result<Self, CodecError> {
        let (transform, w) = parse_header(stored, raw_len)?;
        let words = grouped::Ranged::new(&stored[HEADER..], raw_len)?;
        if !words.align().is_multiple_of(w) {
            return Err(CodecError::corrupt("delta chunks split words"));
        }
        Ok(Ranged {
            transform,
            w,
            words,
        })
    }

    /// The alignment of a range start.
    pub fn align(&self) -> usize {
        self.words.align()
    }

    /// Decodes raw bytes `start..start + out.len()` against `base`, the same range of the base
    /// (alignment as for [`grouped::Ranged::decode_range`]).
    pub fn decode_range(&self, start: u64, base: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
        if base.len() != out.len() {
            return Err(CodecError::corrupt("base range length disagrees"));
        }
        self.words.decode_range(start, out)?;
        let (w, transform) = (self.w, self.transform);
        out.par_chunks_mut(BLOCK)
            .zip(base.par_chunks(BLOCK))
            .for_each(|(out, base)| undo(w, transform, base, out));
        Ok(())
    }
}

/// Bytes per parallel task of the inverse transform (a multiple of every word width).
const BLOCK: usize = 1 << 18;

/// Undoes the transform in place: `out` holds transformed words and receives the target's.
fn undo(w: usize, transform: Transform, base: &[u8], out: &mut [u8]) {
    match w {
        1 => undo_words::<u8, 1>(transform, base, out),
        2 => undo_words::<u16, 2>(transform, base, out),
        4 => undo_words::<u32, 4>(transform, base, out),
        _ => undo_words::<u64, 8>(transform, base, out),
    }
}

fn undo_words<W: Word, const N: usize>(transform: Transform, base: &[u8], out: &mut [u8]) {
    macro_rules! each {
        ($f:expr) => {
            for (o, b) in out.chunks_exact_mut(N).zip(base.chunks_exact(N)) {
                let (x, b) = (W::from_le(o), W::from_le(b));
                $f(x, b).write_le(o);
            }
        };
    }
    match transform {
        Transform::IntDiff => each!(|x: W, b: W| b.wadd(x.unzigzag())),
        Transform::OrderedDiff => each!(|x: W, b: W| b.to_ordered().wadd(x.unzigzag()).unordered()),
        Transform::Xor => each!(|x: W, b: W| x.xor(b)),
    }
}

fn apply(w: usize, transform: Transform, input: &[u8], base: &[u8], out: &mut [u8]) {
    match w {
        1 => apply_words::<u8, 1>(transform, input, base, out),
        2 => apply_words::<u16, 2>(transform, input, base, out),
        4 => apply_words::<u32, 4>(transform, input, base, out),
        _ => apply_words::<u64, 8>(transform, input, base, out),
    }
}

/// Unsigned words of one width, with the operations the transforms need.
trait Word: Copy {
    fn from_le(b: &[u8]) -> Self;
    fn write_le(self, out: &mut [u8]);
    fn wsub(self, o: Self) -> Self;
    fn wadd(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
    fn zigzag(self) -> Self;
    fn unzigzag(self) -> Self;
    fn to_ordered(self) -> Self;
    fn unordered(self) -> Self;
}

macro_rules! word {
    ($u:ty, $i:ty) => {
        impl Word for $u {
            #[inline(always)]
            fn from_le(b: &[u8]) -> Self {
                <$u>::from_le_bytes(b.try_into().unwrap())
            }
            #[inline(always)]
            fn write_le(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes())
            }
            #[inline(always)]
            fn wsub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn wadd(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn xor(self, o: Self) -> Self {
                self ^ o
            }
            #[inline(always)]
            fn zigzag(self) -> Self {
                let s = self as $i;
                ((s << 1) ^ (s >> (<$u>::BITS - 1))) as $u
            }
            #[inline(always)]
            fn unzigzag(self) -> Self {
                (self >> 1) ^ (0 as $u).wrapping_sub(self & 1)
            }
            #[inline(always)]
            fn to_ordered(self) -> Self {
                let sign = 1 << (<$u>::BITS - 1);
                if self & sign != 0 { !self } else { self | sign }
            }
            #[inline(always)]
            fn unordered(self) -> Self {
                let sign = 1 << (<$u>::BITS - 1);
                if self & sign != 0 { self & !sign } else { !self }
            }
        }
    };
}
word!(u8, i8);
word!(u16, i16);
word!(u32, i32);
word!(u64, i64);

/// The forward transform (the encoder's side; [`undo_words`] is its inverse).
fn apply_words<W: Word, const N: usize>(
    transform: Transform,
    input: &[u8],
    base: &[u8],
    out: &mut [u8],
) {
    let triples = input
        .chunks_exact(N)
        .zip(base.chunks_exact(N))
        .zip(out.chunks_exact_mut(N));
    for ((i, b), o) in triples {
        let (x, b) = (W::from_le(i), W::from_le(b));
        let y = match transform {
            Transform::IntDiff => x.wsub(b).zigzag(),
            Transform::OrderedDiff => x.to_ordered().wsub(b.to_ordered()).zigzag(),
            Transform::Xor => x.xor(b),
        };
        y.write_le(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn close_tensors_compress_well_and_round_trip() {
        let base: Vec<f32> = (0..50_000)
            .map(|i| ((i as f32) * 0.37).sin() * 0.05)
            .collect();
        let target: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, x)| x + ((i as f32) * 0.11).cos() * 5e-4)
            .collect();
        let (b, t) = (floats(&base), floats(&target));
        for transform in [Transform::IntDiff, Transform::OrderedDiff, Transform::Xor] {
            let enc = encode(&t, &b, 4, transform, 3);
            assert!(
                enc.len() < t.len() * 3 / 4,
                "{transform:?}: {} of {}",
                enc.len(),
                t.len()
            );
            let mut out = vec![0u8; t.len()];
            decode_into(&enc, &b, &mut out).unwrap();
            assert_eq!(out, t);
        }
    }

    #[test]
    fn ordered_map_is_monotone_and_invertible() {
        let xs = [
            f32::NEG_INFINITY,
            -1.0,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            1.0,
            f32::INFINITY,
        ];
        let ords: Vec<u32> = xs.iter().map(|x| x.to_bits().to_ordered()).collect();
        assert!(ords.windows(2).all(|p| p[0] < p[1]));
        for x in xs {
            assert_eq!(x.to_bits().to_ordered().unordered(), x.to_bits());
        }
    }

    #[test]
    fn rejects_mismatched_base_and_bad_headers() {
        let t = floats(&[1.0, 2.0]);
        let enc = encode(&t, &t, 4, Transform::IntDiff, 3);
        let mut out = vec![0u8; 8];
        assert!(decode_into(&enc, &t[..4], &mut out).is_err());
        let mut bad = enc.clone();
        bad[1] = 9;
        assert!(decode_into(&bad, &t, &mut out).is_err());
        assert!(decode_into(&enc[..2], &t, &mut out).is_err());
    }

    proptest! {
        #[test]
        fn any_words_round_trip(pairs in proptest::collection::vec(any::<(u64, u64)>(), 0..300),
                                w in prop::sample::select(vec![1usize, 2, 4, 8]),
                                t in prop::sample::select(vec![Transform::IntDiff, Transform::OrderedDiff, Transform::Xor])) {
            let target: Vec<u8> = pairs.iter().flat_map(|p| p.0.to_le_bytes()).collect();
            let base: Vec<u8> = pairs.iter().flat_map(|p| p.1.to_le_bytes()).collect();
            let enc = encode(&target, &base, w, t, 1);
            let mut out = vec![0u8; target.len()];
            decode_into(&enc, &base, &mut out).unwrap();
            prop_assert_eq!(out, target);
        }
    }
}
