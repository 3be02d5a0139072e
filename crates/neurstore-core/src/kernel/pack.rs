//! Packed integer codes: 4, 8 or 16 bits per element, rows padded to whole groups of
//! [`GROUP`] elements so the SIMD decoders never need a partial read.
//!
//! Layout of one row (`stride` bytes, little-endian):
//! - 8 bits: one `i8` per element;
//! - 16 bits: one `i16` per element;
//! - 4 bits: two's complement nibbles (−8..=7), element `c` in byte `c / 2`, the low nibble
//!   for even `c`; so little-endian u32 word `k` holds elements `8k..8k + 8`, element `8k + j`
//!   in bits `4j..4j + 4` (the SIMD decoder broadcasts a word and shifts each lane).
//!
//! Padding elements hold code 0.

/// Elements per decode group (the unit the SIMD decoders work in).
pub(super) const GROUP: usize = 16;

/// Inclusive signed range a width can hold.
pub(super) fn range(bits: u32) -> (i32, i32) {
    match bits {
        4 => (-8, 7),
        8 => (i8::MIN as i32, i8::MAX as i32),
        16 => (i16::MIN as i32, i16::MAX as i32),
        _ => unreachable!("code width {bits}"),
    }
}

/// Bytes of one packed row of `cols` elements.
pub(super) fn stride(bits: u32, cols: usize) -> usize {
    cols.div_ceil(GROUP) * GROUP * bits as usize / 8
}

/// Codes of a `rows × cols` matrix at one width.
#[derive(Debug, Clone)]
pub(super) struct Packed {
    pub bits: u32,
    pub stride: usize,
    pub data: Vec<u8>,
}

impl Packed {
    /// Packs `code(r, c)`, which must lie in [`range`]`(bits)`.
    pub fn pack(bits: u32, rows: usize, cols: usize, code: impl Fn(usize, usize) -> i32) -> Self {
        let stride = stride(bits, cols);
        let mut data = vec![0u8; rows * stride];
        for (r, row) in data.chunks_exact_mut(stride.max(1)).enumerate().take(rows) {
            for c in 0..cols {
                let v = code(r, c);
                debug_assert!((range(bits).0..=range(bits).1).contains(&v));
                match bits {
                    4 => {
                        let nib = (v as u8) & 0x0F;
                        row[c / 2] |= if c.is_multiple_of(2) { nib } else { nib << 4 };
                    }
                    8 => row[c] = v as i8 as u8,
                    _ => row[2 * c..2 * c + 2].copy_from_slice(&(v as i16).to_le_bytes()),
                }
            }
        }
        Packed { bits, stride, data }
    }

    /// Packed bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.stride..(r + 1) * self.stride]
    }

    /// The code of element (`r`, `c`).
    pub fn code(&self, r: usize, c: usize) -> i32 {
        let row = self.row(r);
        match self.bits {
            4 => {
                let byte = row[c / 2];
                let nib = if c.is_multiple_of(2) {
                    byte & 0x0F
                } else {
                    byte >> 4
                };
                ((nib ^ 8) as i32) - 8
            }
            8 => row[c] as i8 as i32,
            _ => i16::from_le_bytes([row[2 * c], row[2 * c + 1]]) as i32,
        }
    }
}
