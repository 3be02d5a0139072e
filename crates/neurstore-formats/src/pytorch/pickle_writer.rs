//! Writes the pickle of a `state_dict` (protocol 2) that `torch.load(..., weights_only=True)`
//! accepts: an `OrderedDict` of tensors rebuilt by `torch._utils._rebuild_tensor_v2` from
//! persistent storage references.

use neurstore_core::dtype::DType;

/// A tensor entry of the state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// state_dict key.
    pub name: String,
    /// Element type (must have a storage class).
    pub dtype: DType,
    /// Storage key: the archive holds it as `data/<key>`.
    pub storage: String,
    /// Elements in the storage.
    pub storage_numel: u64,
    /// Offset in elements.
    pub offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Strides in elements.
    pub stride: Vec<u64>,
}

/// Low-level opcode writer.
#[derive(Default)]
pub struct Writer {
    /// The pickle so far.
    pub out: Vec<u8>,
}

impl Writer {
    /// `PROTO n`.
    pub fn proto(&mut self, n: u8) -> &mut Self {
        self.out.extend_from_slice(&[0x80, n]);
        self
    }
    /// `GLOBAL module name`.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
        self
    }
    /// One raw opcode byte.
    pub fn op(&mut self, op: u8) -> &mut Self {
        self.out.push(op);
        self
    }
    /// A string (`BINUNICODE`).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self
    }
    /// A non-negative integer, in the shortest opcode.
    pub fn int(&mut self, v: u64) -> &mut Self {
        if v < 256 {
            self.out.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            self.out.push(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, with a zero byte when the top bit is set.
            let mut b = v.to_le_bytes().to_vec();
            while b.len() > 1 && b[b.len() - 1] == 0 && b[b.len() - 2] & 0x80 == 0 {
                b.pop();
            }
            self.out.extend_from_slice(&[0x8a, b.len() as u8]);
            self.out.extend_from_slice(&b);
        }
        self
    }
    /// A tuple of integers.
    pub fn int_tuple(&mut self, v: &[u64]) -> &mut Self {
        self.op(b'(');
        for &x in v {
            self.int(x);
        }
        self.op(b't')
    }
}

/// The pickle of an `OrderedDict` holding `entries` in order.
pub fn state_dict(entries: &[Entry]) -> Vec<u8> {
    let mut w = Writer::default();
    w.proto(2)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .op(b'(');
    for e in entries {
        let class = crate::pytorch::pickle::storage_class(e.dtype).unwrap_or("ByteStorage");
        w.str(&e.name)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(');
        w.op(b'(')
            .str("storage")
            .global("torch", class)
            .str(&e.storage)
            .str("cpu")
            .int(e.storage_numel)
            .op(b't')
            .op(b'Q');
        w.int(e.offset)
            .int_tuple(&e.size)
            .int_tuple(&e.stride)
            .op(0x89);
        w.global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R');
    }
    w.op(b'u').op(b'.');
    w.out
}

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}
