//! A strict protobuf wire-format walker: yields each field of a message with the absolute byte
//! range of its value, which is what tensor ranges need and what generated decoders hide.
//!
//! **Invariant:** every length is checked against the enclosing message before it is used; groups
//! (wire types 3 and 4), field number 0 and over-long varints are refused.

use crate::error::{Error, Result, corrupt};

const FORMAT: &str = "ONNX";

/// A field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 5.
    Fixed32(u32),
    /// Wire type 2: the absolute byte range of the payload.
    Bytes {
        /// First payload byte.
        start: usize,
        /// One past the last payload byte.
        end: usize,
    },
}

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Field number.
    pub number: u32,
    /// Value.
    pub value: Value,
    /// Absolute offset of the field's tag.
    pub tag_at: usize,
}

/// Iterates over the fields of the message at `buf[start..end]`.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// Fields of the message `buf[start..end]` (the caller guarantees the range is inside `buf`).
    pub fn new(buf: &'a [u8], start: usize, end: usize) -> Fields<'a> {
        Fields {
            buf,
            pos: start,
            end: end.min(buf.len()),
            failed: false,
        }
    }

    fn next_field(&mut self) -> Result<Field> {
        let tag_at = self.pos;
        let tag = read_varint(self.buf, &mut self.pos, self.end)?;
        let number = u32::try_from(tag >> 3)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| {
                corrupt(
                    FORMAT,
                    format!("field at byte {tag_at}"),
                    "invalid field number",
                )
            })?;
        let value = match tag & 7 {
            0 => Value::Varint(read_varint(self.buf, &mut self.pos, self.end)?),
            1 => Value::Fixed64(u64::from_le_bytes(self.fixed::<8>(tag_at)?)),
            5 => Value::Fixed32(u32::from_le_bytes(self.fixed::<4>(tag_at)?)),
            2 => {
                let len = read_varint(self.buf, &mut self.pos, self.end)?;
                let start = self.pos;
                let end = (start as u64)
                    .checked_add(len)
                    .filter(|&e| e <= self.end as u64)
                    .ok_or_else(|| {
                        corrupt(
                            FORMAT,
                            format!("field {number} at byte {tag_at}"),
                            format!(
                                "length {len} runs past its message (ends at byte {})",
                                self.end
                            ),
                        )
                    })? as usize;
                self.pos = end;
                Value::Bytes { start, end }
            }
            w => {
                return Err(corrupt(
                    FORMAT,
                    format!("field {number} at byte {tag_at}"),
                    format!("wire type {w} is not allowed"),
                ));
            }
        };
        Ok(Field {
            number,
            value,
            tag_at,
        })
    }

    fn fixed<const N: usize>(&mut self, tag_at: usize) -> Result<[u8; N]> {
        if self.end - self.pos < N {
            return Err(corrupt(
                FORMAT,
                format!("field at byte {tag_at}"),
                "truncated fixed-width value",
            ));
        }
        let v = self.buf[self.pos..self.pos + N]
            .try_into()
            .expect("N bytes");
        self.pos += N;
        Ok(v)
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        let r = self.next_field();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Reads a varint at `*pos`, not past `end`; at most 10 bytes, no bits beyond 64.
pub fn read_varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64> {
    let start = *pos;
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&b) = buf.get(*pos).filter(|_| *pos < end) else {
            return Err(corrupt(
                FORMAT,
                format!("varint at byte {start}"),
                "truncated",
            ));
        };
        *pos += 1;
        if i == 9 && b > 1 {
            return Err(corrupt(
                FORMAT,
                format!("varint at byte {start}"),
                "overflows 64 bits",
            ));
        }
        value |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(corrupt(
        FORMAT,
        format!("varint at byte {start}"),
        "longer than 10 bytes",
    ))
}

/// The UTF-8 string in `buf[start..end]`.
pub fn string(buf: &[u8], start: usize, end: usize) -> Result<String> {
    std::str::from_utf8(&buf[start..end])
        .map(str::to_string)
        .map_err(|_| -> Error { corrupt(FORMAT, format!("string at byte {start}"), "not UTF-8") })
}

/// Appends a varint (for tests and writers).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field.
pub fn put_bytes(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, ((number as u64) << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Appends a varint field.
pub fn put_varint_field(out: &mut Vec<u8>, number: u32, v: u64) {
    put_varint(out, (number as u64) << 3);
    put_varint(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_fields_with_absolute_ranges() {
        let mut m = vec![0xAA]; // a byte before the message
        put_varint_field(&mut m, 1, 300);
        put_bytes(&mut m, 9, b"abc");
        let fields: Vec<Field> = Fields::new(&m, 1, m.len()).collect::<Result<_>>().unwrap();
        assert_eq!(fields[0].value, Value::Varint(300));
        assert_eq!(fields[1].value, Value::Bytes { start: 6, end: 9 });
        assert_eq!(&m[6..9], b"abc");
    }

    #[test]
    fn hostile_wire_data_is_refused() {
        let cases: &[&[u8]] = &[
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // length 4 GiB in a 6-byte message
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // varint > 64 bits
            &[0x0b],                               // group start
            &[0x00, 0x00],                         // field number 0
            &[0x09, 1, 2],                         // truncated fixed64
            &[0x08],                               // truncated varint
        ];
        for c in cases {
            let r: Result<Vec<Field>> = Fields::new(c, 0, c.len()).collect();
            assert!(r.is_err(), "{c:?}");
        }
    }
}
