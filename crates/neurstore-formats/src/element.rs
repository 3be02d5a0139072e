//! Element types of tensors in model files: the dense dtypes of `neurstore_core`, plus GGML's
//! block-quantized types, kept as opaque bytes with their true shape.

use neurstore_core::dtype::{DType, element_count};

/// The element type of a tensor found in a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// A dtype the store understands element by element (takes part in deltas when float).
    Dense(DType),
    /// A GGML block type: stored exactly, as opaque bytes.
    Ggml(GgmlType),
}

impl ElementType {
    /// Byte length of a tensor of this type and row-major `shape`, or `None` when it overflows
    /// or (GGML) the innermost dimension is not a whole number of blocks.
    pub fn byte_len(self, shape: &[u64]) -> Option<u64> {
        match self {
            ElementType::Dense(d) => d.byte_len(element_count(shape)?),
            ElementType::Ggml(g) => g.byte_len(shape),
        }
    }

    /// The dtype the tensor is stored under: its own, or `U8` for opaque GGML blocks.
    pub fn storage_dtype(self) -> DType {
        match self {
            ElementType::Dense(d) => d,
            ElementType::Ggml(_) => DType::U8,
        }
    }

    /// Display name: the safetensors name, or the GGML name.
    pub fn name(self) -> String {
        match self {
            ElementType::Dense(d) => d.as_str().to_string(),
            ElementType::Ggml(g) => g.name().to_string(),
        }
    }
}

/// A GGML tensor type id (`ggml_type`), validated against the table of known types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// (id, name, elements per block, bytes per block) of every GGML type a GGUF file may hold.
/// Ids 4, 5, 31-33 and 36-38 were removed from GGML and are refused.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// The type with this id, if GGML defines it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().any(|t| t.0 == id).then_some(GgmlType(id))
    }

    /// Every known type.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        GGML_TYPES.iter().map(|t| GgmlType(t.0))
    }

    fn entry(self) -> &'static (u32, &'static str, u64, u64) {
        GGML_TYPES
            .iter()
            .find(|t| t.0 == self.0)
            .expect("constructed from the table")
    }

    /// The `ggml_type` id.
    pub fn id(self) -> u32 {
        self.0
    }

    /// GGML's name of the type.
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// Elements per block (1 for plain types).
    pub fn block_elements(self) -> u64 {
        self.entry().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.entry().3
    }

    /// The dense dtype of a plain (one element per block) type.
    pub fn dense(self) -> Option<DType> {
        Some(match self.0 {
            0 => DType::F32,
            1 => DType::F16,
            24 => DType::I8,
            25 => DType::I16,
            26 => DType::I32,
            27 => DType::I64,
            28 => DType::F64,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// The GGML id of a dense dtype, where GGML has one.
    pub fn from_dense(d: DType) -> Option<GgmlType> {
        GgmlType::all().find(|g| g.dense() == Some(d))
    }

    /// Byte length of a row-major `shape` (innermost dimension last): the innermost dimension
    /// must hold whole blocks.
    pub fn byte_len(self, shape: &[u64]) -> Option<u64> {
        let inner = shape.last().copied().unwrap_or(1);
        if !inner.is_multiple_of(self.block_elements()) {
            return None;
        }
        let blocks = element_count(shape)? / self.block_elements();
        blocks.checked_mul(self.block_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        let q41 = GgmlType::from_id(3).unwrap();
        assert_eq!(q41.name(), "Q4_1");
        assert_eq!(q41.byte_len(&[2, 64]), Some(2 * 2 * 20));
        assert_eq!(
            q41.byte_len(&[64, 2]),
            None,
            "innermost dim must hold whole blocks"
        );
        assert!(GgmlType::from_id(4).is_none());
        assert!(GgmlType::from_id(1000).is_none());
        for g in GgmlType::all() {
            if let Some(d) = g.dense() {
                assert_eq!(g.block_bytes() * 8, d.bits());
                assert_eq!(GgmlType::from_dense(d), Some(g));
            }
        }
        assert_eq!(
            ElementType::Ggml(q41).byte_len(&[u64::MAX, 32]),
            None,
            "overflow is caught"
        );
    }
}
