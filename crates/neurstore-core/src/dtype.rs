//! Element types a stored tensor can have: every dtype the safetensors format defines.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor, named as in the safetensors header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DType {
    /// Boolean, one byte per element.
    Bool,
    /// 4-bit float (E2M1), two elements per byte.
    F4,
    /// 6-bit float, E2M3.
    F6E2M3,
    /// 6-bit float, E3M2.
    F6E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, E5M2.
    F8E5M2,
    /// 8-bit float, E4M3.
    F8E4M3,
    /// 8-bit exponent-only scale (E8M0).
    F8E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex number of two f32.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

/// Every dtype, in the order of the enum.
pub const ALL_DTYPES: [DType; 20] = [
    DType::Bool,
    DType::F4,
    DType::F6E2M3,
    DType::F6E3M2,
    DType::U8,
    DType::I8,
    DType::F8E5M2,
    DType::F8E4M3,
    DType::F8E8M0,
    DType::I16,
    DType::U16,
    DType::F16,
    DType::BF16,
    DType::I32,
    DType::U32,
    DType::F32,
    DType::C64,
    DType::F64,
    DType::I64,
    DType::U64,
];

impl DType {
    /// Size of one element in bits.
    pub fn bits(self) -> u64 {
        match self {
            DType::F4 => 4,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::Bool | DType::U8 | DType::I8 => 8,
            DType::F8E5M2 | DType::F8E4M3 | DType::F8E8M0 => 8,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 16,
            DType::I32 | DType::U32 | DType::F32 => 32,
            DType::C64 | DType::F64 | DType::I64 | DType::U64 => 64,
        }
    }

    /// The byte-plane width used by byte grouping: the size of one element in bytes for types of
    /// whole bytes wider than one, or 1 (no grouping) for byte and sub-byte types.
    pub fn plane_width(self) -> usize {
        match self {
            DType::C64 => 4, // two f32 per element: group by the f32 lanes
            t if t.bits() >= 16 => (t.bits() / 8) as usize,
            _ => 1,
        }
    }

    /// True for floating-point types (including complex).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F4
                | DType::F6E2M3
                | DType::F6E3M2
                | DType::F8E5M2
                | DType::F8E4M3
                | DType::F8E8M0
                | DType::F16
                | DType::BF16
                | DType::F32
                | DType::C64
                | DType::F64
        )
    }

    /// The name safetensors uses in its header.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::F4 => "F4",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E8M0 => "F8_E8M0",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::C64 => "C64",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Number of bytes a tensor of this type with `elements` elements occupies, or `None` when it
    /// overflows `u64` or sub-byte elements do not fill whole bytes.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        let bits = elements.checked_mul(self.bits())?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a dtype name that safetensors does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype {0:?}")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_DTYPES
            .iter()
            .copied()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDType(s.to_string()))
    }
}

/// Number of elements of a shape, or `None` on overflow.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in ALL_DTYPES {
            assert_eq!(d.as_str().parse::<DType>().unwrap(), d);
        }
        assert!("F128".parse::<DType>().is_err());
    }

    #[test]
    fn byte_lengths() {
        assert_eq!(DType::F32.byte_len(3), Some(12));
        assert_eq!(DType::F4.byte_len(3), None);
        assert_eq!(DType::F4.byte_len(4), Some(2));
        assert_eq!(DType::F6E2M3.byte_len(4), Some(3));
        assert_eq!(DType::U64.byte_len(u64::MAX), None);
        assert_eq!(element_count(&[u64::MAX, 2]), None);
        assert_eq!(element_count(&[]), Some(1));
    }
}
