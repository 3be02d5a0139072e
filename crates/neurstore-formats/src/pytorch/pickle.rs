//! A restricted pickle interpreter: it understands only what a PyTorch `state_dict` needs and
//! executes nothing. Values are built into an arena; globals are checked against a whitelist
//! the moment they are named, so a pickle that would import `os.system` fails right there.
//!
//! Allowed globals: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storage classes (`torch.FloatStorage`, ...),
//! which only name a dtype. Allowed opcodes: the binary ones of protocols 2 to 5 that build
//! plain values and containers, memo access, `GLOBAL`/`STACK_GLOBAL`, `REDUCE` (of an allowed
//! global), `BUILD` (on a dict: its state is ignored) and `BINPERSID` (a storage reference).
//! **Invariant:** every value costs at least one input byte, so memory is bounded by the pickle's
//! length; lengths are checked against the bytes left before anything is copied.

use std::collections::HashMap;

use neurstore_core::dtype::DType;

use crate::error::{Error, Result, corrupt};

const FORMAT: &str = "pickle";

/// Index of a value in the arena.
pub type Id = usize;

/// A global the interpreter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// A typed storage class, e.g. `torch.FloatStorage`.
    Storage(DType),
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// Key of the storage (`data/<key>` in the archive).
    pub storage: String,
    /// Element type of the storage.
    pub dtype: DType,
    /// Elements in the storage.
    pub storage_numel: u64,
    /// Offset of the first element, in elements.
    pub offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

/// A value built by the interpreter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A bytes object (only its length is kept).
    Bytes(usize),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list (or set).
    List(Vec<Id>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// An allowed global, not yet called.
    Global(Global),
    /// A storage reference from a persistent id.
    Storage {
        /// Storage key.
        key: String,
        /// Element type.
        dtype: DType,
        /// Elements.
        numel: u64,
    },
    /// A rebuilt tensor.
    Tensor(TensorRef),
}

/// The result of interpreting a pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Pickle {
    /// Every value built.
    pub values: Vec<Value>,
    /// The value `STOP` returned.
    pub root: Id,
}

/// Maps a whitelisted global to what it means; anything else is refused, naming it.
pub fn allowed_global(module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", storage) => {
            Global::Storage(storage_dtype(storage).ok_or_else(|| forbidden(module, name))?)
        }
        _ => return Err(forbidden(module, name)),
    };
    Ok(g)
}

fn forbidden(module: &str, name: &str) -> Error {
    Error::ForbiddenGlobal {
        module: module.to_string(),
        name: name.to_string(),
    }
}

/// The dtype of a typed storage class name.
pub fn storage_dtype(class: &str) -> Option<DType> {
    STORAGES.iter().find(|(n, _)| *n == class).map(|(_, d)| *d)
}

/// The storage class name of a dtype, where PyTorch has one.
pub fn storage_class(d: DType) -> Option<&'static str> {
    STORAGES.iter().find(|(_, x)| *x == d).map(|(n, _)| *n)
}

const STORAGES: [(&str, DType); 11] = [
    ("FloatStorage", DType::F32),
    ("DoubleStorage", DType::F64),
    ("HalfStorage", DType::F16),
    ("BFloat16Storage", DType::BF16),
    ("LongStorage", DType::I64),
    ("IntStorage", DType::I32),
    ("ShortStorage", DType::I16),
    ("CharStorage", DType::I8),
    ("ByteStorage", DType::U8),
    ("BoolStorage", DType::Bool),
    ("ComplexFloatStorage", DType::C64),
];

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    values: Vec<Value>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

/// Interprets `input`; it must end with `STOP`, nothing after it and nothing else on the stack.
pub fn interpret(input: &[u8]) -> Result<Pickle> {
    let mut m = Machine {
        input,
        pos: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = m.pos;
        let op = m.take(1)?[0];
        if op == b'.' {
            let root = m.pop()?;
            if !m.stack.is_empty() || !m.marks.is_empty() {
                return Err(m.bad(at, "values or marks left on the stack at STOP"));
            }
            if m.pos != input.len() {
                return Err(m.bad(at, format!("{} bytes after STOP", input.len() - m.pos)));
            }
            return Ok(Pickle {
                values: m.values,
                root,
            });
        }
        m.step(op, at)?;
    }
}

impl<'a> Machine<'a> {
    fn bad(&self, at: usize, detail: impl Into<String>) -> Error {
        corrupt(FORMAT, format!("opcode at byte {at}"), detail)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.input.len() - self.pos < n {
            return Err(self.bad(
                self.pos,
                format!("{n} bytes needed, {} left", self.input.len() - self.pos),
            ));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn le(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn len_prefixed(&mut self, width: usize) -> Result<&'a [u8]> {
        let n = self.le(width)?;
        let n = usize::try_from(n).map_err(|_| self.bad(self.pos, "length overflows"))?;
        self.take(n)
    }

    fn push(&mut self, v: Value) -> Id {
        self.values.push(v);
        let id = self.values.len() - 1;
        self.stack.push(id);
        id
    }

    fn pop(&mut self) -> Result<Id> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.bad(self.pos, "pop across a mark"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.bad(self.pos, "stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.bad(self.pos, "no mark"))?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.bad(self.pos, "stack underflow"))
    }

    fn text(&self, at: usize, b: &[u8]) -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.bad(at, "string is not UTF-8"))
    }

    fn step(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            0x80 => {
                let p = self.take(1)?[0];
                if !(2..=5).contains(&p) {
                    return Err(self.bad(at, format!("protocol {p} (only 2 to 5 are read)")));
                }
            }
            0x95 => drop(self.take(8)?), // FRAME: a hint, the data follows inline
            b'(' => self.marks.push(self.stack.len()),
            b'}' => drop(self.push(Value::Dict(vec![]))),
            b']' | 0x8f => drop(self.push(Value::List(vec![]))),
            b')' => drop(self.push(Value::Tuple(vec![]))),
            b'N' => drop(self.push(Value::None)),
            0x88 => drop(self.push(Value::Bool(true))),
            0x89 => drop(self.push(Value::Bool(false))),
            b'K' => {
                let v = self.le(1)? as i64;
                self.push(Value::Int(v));
            }
            b'M' => {
                let v = self.le(2)? as i64;
                self.push(Value::Int(v));
            }
            b'J' => {
                let v = self.le(4)? as u32 as i32 as i64;
                self.push(Value::Int(v));
            }
            0x8a | 0x8b => {
                let n = self.le(if op == 0x8a { 1 } else { 4 })? as usize;
                if n > 8 {
                    return Err(self.bad(at, format!("integer of {n} bytes")));
                }
                let b = self.take(n)?;
                let v = b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
                let v = if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    (v | (!0u64 << (8 * n))) as i64
                } else {
                    v as i64
                };
                self.push(Value::Int(v));
            }
            b'G' => {
                let b = self.take(8)?;
                self.push(Value::Float(f64::from_be_bytes(
                    b.try_into().expect("8 bytes"),
                )));
            }
            b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                let width = match op {
                    0x8c | b'U' => 1,
                    0x8d => 8,
                    _ => 4,
                };
                let b = self.len_prefixed(width)?;
                let s = if matches!(op, b'U' | b'T') {
                    b.iter().map(|&c| c as char).collect()
                } else {
                    self.text(at, b)?
                };
                self.push(Value::Str(s));
            }
            b'B' | b'C' | 0x8e => {
                let width = match op {
                    b'C' => 1,
                    0x8e => 8,
                    _ => 4,
                };
                let n = self.len_prefixed(width)?.len();
                self.push(Value::Bytes(n));
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
                items.reverse();
                self.push(Value::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(items));
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs =
                    pairs(&items).ok_or_else(|| self.bad(at, "odd number of dict items"))?;
                self.push(Value::Dict(pairs));
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(at, vec![v])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend_list(at, items)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(at, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs =
                    pairs(&items).ok_or_else(|| self.bad(at, "odd number of dict items"))?;
                self.extend_dict(at, pairs)?;
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => self.le(1)? as u32,
                    b'r' => self.le(4)? as u32,
                    _ => self.memo.len() as u32,
                };
                let v = self.top()?;
                self.memo.insert(key, v);
            }
            b'h' | b'j' => {
                let key = self.le(if op == b'h' { 1 } else { 4 })? as u32;
                let v = *self
                    .memo
                    .get(&key)
                    .ok_or_else(|| self.bad(at, format!("memo {key} is empty")))?;
                self.stack.push(v);
            }
            b'0' => drop(self.pop()?),
            b'1' => drop(self.pop_mark()?),
            b'c' => {
                let module = self.line(at)?;
                let name = self.line(at)?;
                let g = allowed_global(&module, &name)?;
                self.push(Value::Global(g));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.values[module], &self.values[name]) {
                    (Value::Str(m), Value::Str(n)) => {
                        let g = allowed_global(m, n)?;
                        self.push(Value::Global(g));
                    }
                    _ => return Err(self.bad(at, "STACK_GLOBAL of non-strings")),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent(at, pid)?;
                self.push(v);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.reduce(at, callable, args)?;
            }
            b'b' => {
                let _state = self.pop()?;
                let target = self.top()?;
                if !matches!(self.values[target], Value::Dict(_)) {
                    return Err(self.bad(at, "BUILD is only allowed on a dict (OrderedDict state)"));
                }
            }
            _ => {
                return Err(self.bad(
                    at,
                    format!("opcode 0x{op:02x} ({:?}) is not allowed", op as char),
                ));
            }
        }
        Ok(())
    }

    fn line(&mut self, at: usize) -> Result<String> {
        let rest = &self.input[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.bad(at, "GLOBAL without newline"))?;
        let s = self.text(at, &rest[..n])?;
        self.pos += n + 1;
        Ok(s)
    }

    fn extend_list(&mut self, at: usize, items: Vec<Id>) -> Result<()> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.bad(at, "APPEND to a non-list")),
        }
    }

    fn extend_dict(&mut self, at: usize, items: Vec<(Id, Id)>) -> Result<()> {
        let target = self.top()?;
        match &mut self.values[target] {
            Value::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            _ => Err(self.bad(at, "SETITEM on a non-dict")),
        }
    }

    fn int(&self, id: Id, what: &str, at: usize) -> Result<u64> {
        match self.values[id] {
            Value::Int(v) if v >= 0 => Ok(v as u64),
            _ => Err(self.bad(at, format!("{what} must be a non-negative integer"))),
        }
    }

    fn ints(&self, id: Id, what: &str, at: usize) -> Result<Vec<u64>> {
        match &self.values[id] {
            Value::Tuple(items) | Value::List(items) if items.len() <= 64 => {
                items.iter().map(|&i| self.int(i, what, at)).collect()
            }
            _ => Err(self.bad(at, format!("{what} must be a tuple of at most 64 integers"))),
        }
    }

    fn persistent(&self, at: usize, pid: Id) -> Result<Value> {
        let Value::Tuple(items) = &self.values[pid] else {
            return Err(self.bad(at, "persistent id must be a tuple"));
        };
        let [tag, class, key, _location, numel] = items.as_slice() else {
            return Err(self.bad(
                at,
                "persistent id must be ('storage', type, key, location, numel)",
            ));
        };
        match (&self.values[*tag], &self.values[*class], &self.values[*key]) {
            (Value::Str(t), Value::Global(Global::Storage(dtype)), Value::Str(k))
                if t == "storage" =>
            {
                if k.is_empty() || k.contains(['/', '\\']) || k.starts_with('.') {
                    return Err(self.bad(at, format!("storage key {k:?} is not a plain name")));
                }
                Ok(Value::Storage {
                    key: k.clone(),
                    dtype: *dtype,
                    numel: self.int(*numel, "storage size", at)?,
                })
            }
            _ => Err(self.bad(
                at,
                "persistent id must be ('storage', a storage type, a string key, ...)",
            )),
        }
    }

    fn reduce(&mut self, at: usize, callable: Id, args: Id) -> Result<()> {
        let Value::Global(g) = self.values[callable] else {
            return Err(self.bad(at, "REDUCE of something that is not an allowed global"));
        };
        let Value::Tuple(a) = self.values[args].clone() else {
            return Err(self.bad(at, "REDUCE arguments must be a tuple"));
        };
        match g {
            Global::OrderedDict if a.is_empty() => drop(self.push(Value::Dict(vec![]))),
            Global::RebuildTensor if (6..=7).contains(&a.len()) => {
                let Value::Storage { key, dtype, numel } = self.values[a[0]].clone() else {
                    return Err(self.bad(at, "_rebuild_tensor_v2 needs a storage"));
                };
                let (offset, size, stride) = (
                    self.int(a[1], "storage offset", at)?,
                    self.ints(a[2], "size", at)?,
                    self.ints(a[3], "stride", at)?,
                );
                if size.len() != stride.len() {
                    return Err(self.bad(at, "size and stride differ in length"));
                }
                self.push(Value::Tensor(TensorRef {
                    storage: key,
                    dtype,
                    storage_numel: numel,
                    offset,
                    size,
                    stride,
                }));
            }
            Global::RebuildParameter
                if a.len() == 3 && matches!(self.values[a[0]], Value::Tensor(_)) =>
            {
                self.stack.push(a[0])
            }
            _ => {
                return Err(self.bad(
                    at,
                    format!("call of {g:?} with {} arguments is not allowed", a.len()),
                ));
            }
        }
        Ok(())
    }
}

fn pairs(items: &[Id]) -> Option<Vec<(Id, Id)>> {
    items
        .len()
        .is_multiple_of(2)
        .then(|| items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

#[cfg(test)]
mod tests;
