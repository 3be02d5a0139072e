//! A strict zip reader for `torch.save` archives: the central directory and the local headers
//! must agree, entries must tile the file from byte 0 to the central directory with nothing in
//! between, and stored entries' CRC-32 must match. Only stored (method 0) entries can be tensor
//! ranges; compressed ones stay skeleton.
//!
//! **Invariant:** the entry count is checked against the central directory's size before any
//! allocation, and every offset with checked arithmetic against the file length.

use std::collections::HashSet;

use crate::error::{Error, Result, corrupt};

const FORMAT: &str = "zip";
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const LOCATOR_SIG: u32 = 0x0706_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_DESCRIPTOR: u16 = 1 << 3;

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Name (UTF-8).
    pub name: String,
    /// Compression method: 0 stored, 8 deflated.
    pub method: u16,
    /// CRC-32 of the uncompressed data.
    pub crc: u32,
    /// Uncompressed size.
    pub size: u64,
    /// Offset of the local header.
    pub header_start: u64,
    /// First byte of the (possibly compressed) data.
    pub data_start: u64,
    /// One past the last data byte.
    pub data_end: u64,
    /// One past the entry's last byte (after a data descriptor, if any).
    pub record_end: u64,
}

impl Entry {
    /// True when the data bytes are the member's bytes.
    pub fn is_stored(&self) -> bool {
        self.method == 0
    }
}

/// A validated archive: entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Entries sorted by offset.
    pub entries: Vec<Entry>,
}

impl Archive {
    /// The entry with this name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn need(&self, n: usize, what: &str) -> Result<()> {
        if self.b.len().saturating_sub(self.pos) < n {
            return Err(corrupt(
                FORMAT,
                format!("{what} at byte {}", self.pos),
                "truncated",
            ));
        }
        Ok(())
    }
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.b[self.pos], self.b[self.pos + 1]]);
        self.pos += 2;
        v
    }
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.b[self.pos..self.pos + 4].try_into().expect("4 bytes"));
        self.pos += 4;
        v
    }
    fn u64(&mut self) -> u64 {
        let v = u64::from_le_bytes(self.b[self.pos..self.pos + 8].try_into().expect("8 bytes"));
        self.pos += 8;
        v
    }
}

/// Where the central directory is and how many entries it holds.
struct Directory {
    count: u64,
    start: u64,
    size: u64,
}

/// Reads and validates an archive held in memory.
pub fn read(file: &[u8]) -> Result<Archive> {
    read_with(file, Crc::Verify)
}

/// Whether [`read_with`] checks the CRC-32 of stored entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crc {
    /// Check every stored entry (one pass over the data).
    Verify,
    /// Leave it to the caller, who reads every byte anyway (an import hashing the tensors) and
    /// checks [`Entry::crc`] in that same pass.
    Skip,
}

/// [`read`], with the CRC-32 check of stored entries optional.
pub fn read_with(file: &[u8], crc: Crc) -> Result<Archive> {
    let dir = find_directory(file)?;
    if dir.size / 46 < dir.count {
        return Err(corrupt(
            FORMAT,
            "central directory",
            format!("{} entries cannot fit in {} bytes", dir.count, dir.size),
        ));
    }
    let mut entries = Vec::with_capacity(dir.count as usize);
    let mut names = HashSet::new();
    let mut c = Cursor {
        b: file,
        pos: dir.start as usize,
    };
    for _ in 0..dir.count {
        let e = central_entry(&mut c, file, crc)?;
        if !names.insert(e.name.clone()) {
            return Err(corrupt(FORMAT, &e.name, "duplicate entry name"));
        }
        entries.push(e);
    }
    if c.pos as u64 != dir.start + dir.size {
        return Err(corrupt(
            FORMAT,
            "central directory",
            "its size does not match its entries",
        ));
    }
    entries.sort_by_key(|e| e.header_start);
    check_tiling(&entries, dir.start)?;
    Ok(Archive { entries })
}

fn find_directory(file: &[u8]) -> Result<Directory> {
    let len = file.len();
    if len < 22 {
        return Err(corrupt(
            FORMAT,
            "end of central directory",
            "file too short",
        ));
    }
    let lowest = len.saturating_sub(22 + 0xFFFF);
    let eocd = (lowest..=len - 22)
        .rev()
        .find(|&p| {
            u32::from_le_bytes(file[p..p + 4].try_into().expect("4")) == EOCD_SIG
                && p + 22 + u16::from_le_bytes([file[p + 20], file[p + 21]]) as usize == len
        })
        .ok_or_else(|| {
            corrupt(
                FORMAT,
                "end of central directory",
                "not found (not a zip archive?)",
            )
        })?;
    let mut c = Cursor {
        b: file,
        pos: eocd + 4,
    };
    let (disk, cd_disk, on_disk, total) = (c.u16(), c.u16(), c.u16(), c.u16());
    let (size, start) = (c.u32(), c.u32());
    if disk != 0 || cd_disk != 0 || on_disk != total {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: "multi-disk archives".into(),
        });
    }
    let needs64 = total == 0xFFFF || size == u32::MAX || start == u32::MAX;
    let has_locator = eocd >= 20
        && u32::from_le_bytes(file[eocd - 20..eocd - 16].try_into().expect("4")) == LOCATOR_SIG;
    if !needs64 && !has_locator {
        return Ok(Directory {
            count: total as u64,
            start: start as u64,
            size: size as u64,
        })
        .and_then(|d| check_directory_end(d, eocd as u64));
    }
    if !has_locator {
        return Err(corrupt(FORMAT, "zip64 end locator", "missing"));
    }
    let mut l = Cursor {
        b: file,
        pos: eocd - 16,
    };
    let (ldisk, eocd64, disks) = (l.u32(), l.u64(), l.u32());
    if ldisk != 0 || disks != 1 {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: "multi-disk archives".into(),
        });
    }
    let at = usize::try_from(eocd64)
        .ok()
        .filter(|&a| a.checked_add(56).is_some_and(|e| e <= eocd - 20));
    let Some(at) = at else {
        return Err(corrupt(FORMAT, "zip64 end record", "offset out of range"));
    };
    let mut z = Cursor { b: file, pos: at };
    if z.u32() != EOCD64_SIG {
        return Err(corrupt(FORMAT, "zip64 end record", "bad signature"));
    }
    let record_size = z.u64();
    if record_size.checked_add(12 + at as u64) != Some(eocd as u64 - 20) {
        return Err(corrupt(
            FORMAT,
            "zip64 end record",
            "its size does not reach the locator",
        ));
    }
    let (_made, _needed, zdisk, zcd_disk) = (z.u16(), z.u16(), z.u32(), z.u32());
    let (zon_disk, ztotal, zsize, zstart) = (z.u64(), z.u64(), z.u64(), z.u64());
    if zdisk != 0 || zcd_disk != 0 || zon_disk != ztotal {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: "multi-disk archives".into(),
        });
    }
    check_directory_end(
        Directory {
            count: ztotal,
            start: zstart,
            size: zsize,
        },
        at as u64,
    )
}

fn check_directory_end(d: Directory, end_records: u64) -> Result<Directory> {
    if d.start.checked_add(d.size) != Some(end_records) {
        return Err(corrupt(
            FORMAT,
            "central directory",
            format!(
                "{}+{} does not end where the end records start ({end_records})",
                d.start, d.size
            ),
        ));
    }
    Ok(d)
}

/// Reads one central directory entry and checks its local header against it.
fn central_entry(c: &mut Cursor, file: &[u8], check: Crc) -> Result<Entry> {
    c.need(46, "central directory entry")?;
    let at = c.pos;
    if c.u32() != CENTRAL_SIG {
        return Err(corrupt(
            FORMAT,
            format!("central directory entry at byte {at}"),
            "bad signature",
        ));
    }
    let (_made, _needed, flags, method, _time, _date) =
        (c.u16(), c.u16(), c.u16(), c.u16(), c.u16(), c.u16());
    let crc = c.u32();
    let (mut csize, mut size) = (c.u32() as u64, c.u32() as u64);
    let (name_len, extra_len, comment_len) = (c.u16() as usize, c.u16() as usize, c.u16() as usize);
    let (disk, _int, _ext) = (c.u16(), c.u16(), c.u32());
    let mut offset = c.u32() as u64;
    c.need(
        name_len + extra_len + comment_len,
        "central directory entry",
    )?;
    let name = std::str::from_utf8(&file[c.pos..c.pos + name_len])
        .map_err(|_| corrupt(FORMAT, format!("entry at byte {at}"), "name is not UTF-8"))?
        .to_string();
    let extra = &file[c.pos + name_len..c.pos + name_len + extra_len];
    c.pos += name_len + extra_len + comment_len;
    apply_zip64(extra, &mut size, &mut csize, &mut offset)
        .map_err(|d| corrupt(FORMAT, &name, d))?;
    if disk != 0 {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: "multi-disk archives".into(),
        });
    }
    if flags & FLAG_ENCRYPTED != 0 {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: format!("encrypted entry {name:?}"),
        });
    }
    if method != 0 && method != 8 {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: format!("compression method {method} of {name:?}"),
        });
    }
    if method == 0 && csize != size {
        return Err(corrupt(
            FORMAT,
            &name,
            "stored entry with different compressed and plain sizes",
        ));
    }
    let e = local_entry(file, name, flags, method, crc, csize, size, offset)?;
    if check == Crc::Verify
        && e.is_stored()
        && crc32fast::hash(&file[e.data_start as usize..e.data_end as usize]) != crc
    {
        return Err(corrupt(FORMAT, &e.name, "CRC-32 mismatch"));
    }
    Ok(e)
}

/// Replaces saturated 32-bit fields with their zip64 extra values (in the order the spec sets).
fn apply_zip64(
    mut extra: &[u8],
    size: &mut u64,
    csize: &mut u64,
    offset: &mut u64,
) -> std::result::Result<(), String> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let n = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let body = extra
            .get(4..4 + n)
            .ok_or("extra field runs past its area")?;
        if id == 1 {
            let mut vals = body
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8")));
            for field in [&mut *size, &mut *csize, &mut *offset] {
                if *field == u32::MAX as u64 {
                    *field = vals.next().ok_or("zip64 extra field too short")?;
                }
            }
        }
        extra = &extra[4 + n..];
    }
    if !extra.is_empty() {
        return Err("truncated extra field".into());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn local_entry(
    file: &[u8],
    name: String,
    flags: u16,
    method: u16,
    crc: u32,
    csize: u64,
    size: u64,
    offset: u64,
) -> Result<Entry> {
    let bad = |d: &str| {
        corrupt(
            FORMAT,
            format!("local header of {name:?} at byte {offset}"),
            d,
        )
    };
    let at = usize::try_from(offset).map_err(|_| bad("offset out of range"))?;
    let mut c = Cursor { b: file, pos: at };
    c.need(30, "local header")?;
    if c.u32() != LOCAL_SIG {
        return Err(bad("bad signature"));
    }
    let (_needed, lflags, lmethod, _time, _date) = (c.u16(), c.u16(), c.u16(), c.u16(), c.u16());
    let lcrc = c.u32();
    let (mut lcsize, mut lsize) = (c.u32() as u64, c.u32() as u64);
    let (name_len, extra_len) = (c.u16() as usize, c.u16() as usize);
    c.need(name_len + extra_len, "local header")?;
    if &file[c.pos..c.pos + name_len] != name.as_bytes() {
        return Err(bad("name differs from the central directory"));
    }
    let extra = &file[c.pos + name_len..c.pos + name_len + extra_len];
    let zip64 = has_zip64(extra);
    let mut ignored = 0u64;
    apply_zip64(extra, &mut lsize, &mut lcsize, &mut ignored).map_err(|d| bad(&d))?;
    if lflags != flags || lmethod != method {
        return Err(bad("flags or method differ from the central directory"));
    }
    let descriptor = flags & FLAG_DESCRIPTOR != 0;
    let zeroed = lcrc == 0 && lcsize == 0 && lsize == 0;
    if !(descriptor && zeroed) && (lcrc != crc || lcsize != csize || lsize != size) {
        return Err(bad("CRC or sizes differ from the central directory"));
    }
    let data_start = (c.pos + name_len + extra_len) as u64;
    let data_end = data_start
        .checked_add(csize)
        .filter(|&e| e <= file.len() as u64)
        .ok_or_else(|| bad("data runs past the end of the file"))?;
    let record_end = if descriptor {
        check_descriptor(file, data_end, crc, csize, size, zip64).map_err(|d| bad(&d))?
    } else {
        data_end
    };
    Ok(Entry {
        name,
        method,
        crc,
        size,
        header_start: offset,
        data_start,
        data_end,
        record_end,
    })
}

fn has_zip64(mut extra: &[u8]) -> bool {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let n = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        if id == 1 {
            return true;
        }
        extra = extra.get(4 + n..).unwrap_or(&[]);
    }
    false
}

/// Checks the data descriptor after an entry's data; returns where it ends.
fn check_descriptor(
    file: &[u8],
    at: u64,
    crc: u32,
    csize: u64,
    size: u64,
    zip64: bool,
) -> std::result::Result<u64, String> {
    let width = if zip64 { 8 } else { 4 };
    let len = 4 + 4 + 2 * width;
    let at = at as usize;
    let d = file
        .get(at..at + len)
        .ok_or("data descriptor runs past the end of the file")?;
    if u32::from_le_bytes(d[0..4].try_into().expect("4")) != DESCRIPTOR_SIG {
        return Err("data descriptor without its signature".into());
    }
    let read = |o: usize| -> u64 {
        if width == 8 {
            u64::from_le_bytes(d[o..o + 8].try_into().expect("8"))
        } else {
            u32::from_le_bytes(d[o..o + 4].try_into().expect("4")) as u64
        }
    };
    let dcrc = u32::from_le_bytes(d[4..8].try_into().expect("4"));
    if dcrc != crc || read(8) != csize || read(8 + width) != size {
        return Err("data descriptor differs from the central directory".into());
    }
    Ok((at + len) as u64)
}

fn check_tiling(entries: &[Entry], central_start: u64) -> Result<()> {
    let mut pos = 0u64;
    for e in entries {
        if e.header_start != pos {
            let detail = if e.header_start < pos {
                "overlaps the previous entry".to_string()
            } else {
                format!("bytes {pos}..{} belong to no entry", e.header_start)
            };
            return Err(corrupt(FORMAT, &e.name, detail));
        }
        pos = e.record_end;
    }
    if pos != central_start {
        return Err(corrupt(
            FORMAT,
            "central directory",
            format!("starts at {central_start}, the entries end at {pos}"),
        ));
    }
    Ok(())
}

/// A minimal zip writer: stored entries only, data aligned to 64 bytes with padding in the local
/// extra field (as `torch.save` does), zip64 records when an offset or size needs them.
#[derive(Default)]
pub struct Writer {
    central: Vec<u8>,
    count: u64,
    pos: u64,
}

impl Writer {
    /// A writer for an archive starting at byte 0 of `out`.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Writes one stored entry.
    pub fn add(
        &mut self,
        out: &mut dyn std::io::Write,
        name: &str,
        data: &[u8],
    ) -> std::io::Result<()> {
        let crc = crc32fast::hash(data);
        let size = data.len() as u64;
        let big = size >= u32::MAX as u64 || self.pos >= u32::MAX as u64;
        let zip64_local: Vec<u8> = if big {
            [1u16.to_le_bytes(), 16u16.to_le_bytes()]
                .concat()
                .into_iter()
                .chain(size.to_le_bytes())
                .chain(size.to_le_bytes())
                .collect()
        } else {
            vec![]
        };
        let unpadded = self.pos + 30 + name.len() as u64 + zip64_local.len() as u64;
        let pad = if unpadded.is_multiple_of(64) {
            0
        } else {
            (64 - (unpadded + 4) % 64) % 64 + 4
        };
        let mut local = Vec::with_capacity(30 + name.len() + 80);
        local.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        local.extend_from_slice(&[if big { 45 } else { 20 }, 0, 0, 8, 0, 0, 0, 0, 0x21, 0]); // version, flags: UTF-8, stored, time, date
        local.extend_from_slice(&crc.to_le_bytes());
        let s32 = if big { u32::MAX } else { size as u32 };
        local.extend_from_slice(&s32.to_le_bytes());
        local.extend_from_slice(&s32.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&((zip64_local.len() as u64 + pad) as u16).to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        local.extend_from_slice(&zip64_local);
        if pad > 0 {
            local.extend_from_slice(&0x4246u16.to_le_bytes()); // "FB": padding, as torch writes it
            local.extend_from_slice(&((pad - 4) as u16).to_le_bytes());
            local.resize(local.len() + pad as usize - 4, b'Z');
        }
        out.write_all(&local)?;
        out.write_all(data)?;
        self.central_record(name, crc, size, big);
        self.pos += local.len() as u64 + size;
        self.count += 1;
        Ok(())
    }

    fn central_record(&mut self, name: &str, crc: u32, size: u64, big: bool) {
        let c = &mut self.central;
        let offset_big = self.pos >= u32::MAX as u64;
        let mut extra = Vec::new();
        if big || offset_big {
            let mut body = Vec::new();
            if big {
                body.extend_from_slice(&size.to_le_bytes());
                body.extend_from_slice(&size.to_le_bytes());
            }
            if offset_big {
                body.extend_from_slice(&self.pos.to_le_bytes());
            }
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&(body.len() as u16).to_le_bytes());
            extra.extend_from_slice(&body);
        }
        c.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        c.extend_from_slice(&[
            45,
            3,
            if big { 45 } else { 20 },
            0,
            0,
            8,
            0,
            0,
            0,
            0,
            0x21,
            0,
        ]);
        c.extend_from_slice(&crc.to_le_bytes());
        let s32 = if big { u32::MAX } else { size as u32 };
        c.extend_from_slice(&s32.to_le_bytes());
        c.extend_from_slice(&s32.to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 8]); // comment length, disk, internal and external attributes (first 4)
        c.extend_from_slice(&[0; 2]);
        let off32 = if offset_big {
            u32::MAX
        } else {
            self.pos as u32
        };
        c.extend_from_slice(&off32.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(&extra);
    }

    /// Writes the central directory and the end records.
    pub fn finish(self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.central)?;
        let cd_start = self.pos;
        let cd_size = self.central.len() as u64;
        let end = cd_start + cd_size;
        let zip64 = self.count >= 0xFFFF || end >= u32::MAX as u64;
        if zip64 {
            let mut r = EOCD64_SIG.to_le_bytes().to_vec();
            r.extend_from_slice(&44u64.to_le_bytes());
            r.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            for v in [self.count, self.count, cd_size, cd_start] {
                r.extend_from_slice(&v.to_le_bytes());
            }
            r.extend_from_slice(&LOCATOR_SIG.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&end.to_le_bytes());
            r.extend_from_slice(&1u32.to_le_bytes());
            out.write_all(&r)?;
        }
        let count16 = if zip64 { 0xFFFF } else { self.count as u16 };
        let mut e = EOCD_SIG.to_le_bytes().to_vec();
        e.extend_from_slice(&[0, 0, 0, 0]);
        e.extend_from_slice(&count16.to_le_bytes());
        e.extend_from_slice(&count16.to_le_bytes());
        let sz = if zip64 { u32::MAX } else { cd_size as u32 };
        let st = if zip64 { u32::MAX } else { cd_start as u32 };
        e.extend_from_slice(&sz.to_le_bytes());
        e.extend_from_slice(&st.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        out.write_all(&e)
    }
}

/// Builds an archive in memory from (name, data) pairs.
pub fn write_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new();
    for (name, data) in entries {
        w.add(&mut out, name, data).expect("writing to memory");
    }
    w.finish(&mut out).expect("writing to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_archives_read_back_aligned() {
        let file = write_archive(&[("a/data.pkl", b"pickle"), ("a/data/0", &[7u8; 100])]);
        let ar = read(&file).unwrap();
        assert_eq!(ar.entries.len(), 2);
        let e = ar.get("a/data/0").unwrap();
        assert_eq!(e.data_start % 64, 0);
        assert_eq!(
            &file[e.data_start as usize..e.data_end as usize],
            &[7u8; 100]
        );
    }

    #[test]
    fn corruptions_are_refused() {
        let file = write_archive(&[("a/x", b"hello"), ("a/y", b"world")]);
        let y = read(&file).unwrap().entries[1].clone();
        let mut crc = file.clone();
        crc[y.data_start as usize] ^= 1;
        assert!(read(&crc).unwrap_err().to_string().contains("CRC"));
        let skipped = read_with(&crc, Crc::Skip).unwrap();
        assert_eq!(
            skipped.entries[1].crc,
            crc32fast::hash(b"world"),
            "the caller checks this"
        );
        let mut name = file.clone();
        name[y.header_start as usize + 30] = b'b';
        assert!(
            read(&name)
                .unwrap_err()
                .to_string()
                .contains("name differs")
        );
        let mut gap = file.clone();
        gap.insert(0, 0); // shifts every offset by one
        assert!(read(&gap).is_err());
        for cut in 0..file.len() {
            assert!(read(&file[..cut]).is_err(), "truncated at {cut}");
        }
        let dup = write_archive(&[("a/x", b"1"), ("a/x", b"2")]);
        assert!(read(&dup).unwrap_err().to_string().contains("duplicate"));
    }

    #[test]
    fn huge_entry_counts_are_refused_before_allocating() {
        let mut file = write_archive(&[("a/x", b"1")]);
        let n = file.len();
        file[n - 12..n - 10].copy_from_slice(&0xFFFEu16.to_le_bytes());
        file[n - 14..n - 12].copy_from_slice(&0xFFFEu16.to_le_bytes());
        assert!(read(&file).unwrap_err().to_string().contains("cannot fit"));
    }
}
