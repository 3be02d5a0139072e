//! What a user asks for, as the values a front end receives (command-line flags, Python
//! keyword arguments, SQL arguments), turned into the facade's types and checked here, once, so
//! every front end accepts and refuses the same things with the same words.

use std::path::Path;

use neurstore_core::dtype::DType;
use neurstore_storage::lock::LockWait;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How tensor values are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Bit-exact.
    Lossless,
    /// Every float element within this absolute error.
    Absolute(f64),
    /// Every float element within this fraction of its tensor's root mean square.
    Relative(f64),
}

impl Mode {
    /// The mode a user asked for with `--tolerance X` / `--rel-tolerance X` (neither:
    /// lossless), checked ([`Mode::check`]).
    pub fn from_tolerances(tolerance: Option<f64>, rel_tolerance: Option<f64>) -> Result<Mode> {
        let mode = match (tolerance, rel_tolerance) {
            (None, None) => Mode::Lossless,
            (Some(t), None) => Mode::Absolute(t),
            (None, Some(r)) => Mode::Relative(r),
            (Some(_), Some(_)) => {
                return Err(option_error(
                    "--tolerance",
                    "give --tolerance or --rel-tolerance, not both",
                ));
            }
        };
        mode.check()?;
        Ok(mode)
    }

    /// An absolute tolerance must be finite and positive; a relative one lies strictly between
    /// 0 and 1 (at 1 or more every element may move by its tensor's whole RMS).
    pub fn check(&self) -> Result<()> {
        match *self {
            Mode::Lossless => Ok(()),
            Mode::Absolute(t) if t.is_finite() && t > 0.0 => Ok(()),
            Mode::Absolute(t) => Err(option_error(
                "--tolerance",
                format!("{t} is not a positive finite number; give one such as 1e-4"),
            )),
            Mode::Relative(r) if r > 0.0 && r < 1.0 => Ok(()),
            Mode::Relative(r) => Err(option_error(
                "--rel-tolerance",
                format!("{r} is not between 0 and 1 (exclusive); give a fraction such as 1e-3"),
            )),
        }
    }

    /// The catalog's spelling: "lossless", "abs:X" or "rel:X".
    pub fn label(&self) -> String {
        match self {
            Mode::Lossless => "lossless".into(),
            Mode::Absolute(t) => format!("abs:{t:e}"),
            Mode::Relative(t) => format!("rel:{t:e}"),
        }
    }
}

/// Where delta bases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseChoice {
    /// Search the similarity index.
    Auto,
    /// Store every tensor standalone.
    None,
    /// Pair tensors with the named model's tensors of the same name first, then search.
    Model(String),
}

impl BaseChoice {
    /// `--base`'s value: "auto", "none" or a model name.
    pub fn from_arg(value: &str) -> Result<BaseChoice> {
        match value {
            "auto" => Ok(BaseChoice::Auto),
            "none" => Ok(BaseChoice::None),
            name => {
                validate_name(name)?;
                Ok(BaseChoice::Model(name.to_string()))
            }
        }
    }
}

/// Model names: 1 to 200 characters, no control characters, no '/'.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 200
        && !name.chars().any(|c| c.is_control() || c == '/')
        && name.trim() == name;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Options of `put`.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// User metadata recorded with the model.
    pub metadata: Map<String, Value>,
    /// Lossless or bounded.
    pub mode: Mode,
    /// Where delta bases come from.
    pub base: BaseChoice,
    /// Plan and report without writing anything.
    pub dry_run: bool,
    /// Longest chain of deltas a new tensor may end (1 = deltas only against standalone bases;
    /// at most 64, the longest chain a reader follows).
    pub max_chain_depth: u32,
    /// Accept a tolerance at or above a tensor's largest magnitude (the tensor is then stored
    /// as a constant).
    pub force: bool,
    /// Follow symbolic links in an input directory wherever they point (by default only links
    /// that stay inside it, or a Hugging Face cache snapshot's links to its blobs, are followed).
    pub follow_symlinks: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            metadata: Map::new(),
            mode: Mode::Lossless,
            base: BaseChoice::Auto,
            dry_run: false,
            max_chain_depth: 2,
            force: false,
            follow_symlinks: false,
        }
    }
}

impl PutOptions {
    /// Checks every value: the mode's tolerance and the chain depth.
    pub fn check(&self) -> Result<()> {
        self.mode.check()?;
        if self.max_chain_depth == 0 {
            return Err(option_error(
                "--max-chain-depth",
                "must be at least 1 (use --base none to store standalone)",
            ));
        }
        // Readers refuse longer chains (as a cycle's symptom): never write one.
        if self.max_chain_depth > crate::decode::MAX_CHAIN {
            return Err(option_error(
                "--max-chain-depth",
                format!("must be at most {}", crate::decode::MAX_CHAIN),
            ));
        }
        Ok(())
    }
}

/// User metadata from `KEY=VALUE` pairs (values are strings).
pub fn metadata_from_pairs<S: AsRef<str>>(pairs: &[S]) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for pair in pairs {
        let pair = pair.as_ref();
        let Some((k, v)) = pair.split_once('=') else {
            return Err(option_error(
                "--meta",
                format!("takes KEY=VALUE, got {pair:?}"),
            ));
        };
        if k.is_empty() {
            return Err(option_error("--meta", format!("{pair:?} has an empty key")));
        }
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(map)
}

/// User metadata from a JSON object's text.
pub fn metadata_from_json(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(option_error(
            "metadata",
            "must be a dict with string keys and JSON values",
        )),
    }
}

/// A thread count to run with, and a note for the user when it differs from the one asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threads {
    /// Threads to start.
    pub count: usize,
    /// Why the count differs from the one asked, if it does.
    pub note: Option<String>,
}

/// `--threads N`: at least 1, at most the cores available (more only add memory and
/// contention, and a huge count fails to start).
pub fn threads(requested: usize) -> Result<Threads> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match requested {
        0 => Err(option_error("--threads", "must be at least 1")),
        n if n > cores => Ok(Threads {
            count: cores,
            note: Some(format!(
                "--threads {n} is more than the {cores} cores available; using {cores}"
            )),
        }),
        n => Ok(Threads {
            count: n,
            note: None,
        }),
    }
}

/// `--wait[=SECONDS]` (Python's `wait=`): how long a writer waits for the lock another
/// process holds. `None` fails at once, infinity waits as long as it takes, any other
/// non-negative number of seconds waits that long.
pub fn lock_wait(seconds: Option<f64>) -> Result<LockWait> {
    match seconds {
        None => Ok(LockWait::No),
        Some(s) if s == f64::INFINITY => Ok(LockWait::Forever),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(LockWait::For(
            std::time::Duration::from_secs_f64(s.min(1e9)),
        )),
        Some(s) => Err(option_error(
            "--wait",
            format!("{s} is not a number of seconds; give one such as 30"),
        )),
    }
}

/// The rule for `get`'s output path: a path that exists is replaced only with `force`. An
/// empty directory is filled; a non-empty one is never replaced (its files would be lost), with
/// `force` or without.
pub fn check_output(path: &Path, force: bool) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
        Ok(meta) => meta,
    };
    if meta.is_dir() {
        let empty = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .next()
            .is_none();
        return if empty {
            Ok(())
        } else {
            Err(Error::invalid(
                path,
                "is a non-empty directory; choose another output path, or empty it first",
            ))
        };
    }
    if force {
        return Ok(());
    }
    Err(Error::invalid(
        path,
        "already exists; choose another output path, or pass --force to replace it",
    ))
}

/// Refuses (without `force`) a bounded tolerance at or above a tensor's largest magnitude:
/// every element of it would fit within the bound of zero, so it would be stored as a constant.
pub(crate) fn check_tolerance_fits(
    file: &str,
    tensor: &str,
    dtype: DType,
    raw: &[u8],
    tolerance: f64,
) -> Result<()> {
    let largest = max_magnitude(dtype, raw);
    if largest > 0.0 && tolerance >= largest {
        return Err(option_error(
            "--tolerance",
            format!(
                "{tolerance:e} is at or above the largest magnitude {largest:e} of tensor {tensor:?} in {file}, which would be stored as a constant; give a smaller tolerance, or --force to accept it"
            ),
        ));
    }
    Ok(())
}

/// Largest |x| over the finite elements of a float tensor (0 for other dtypes).
fn max_magnitude(dtype: DType, raw: &[u8]) -> f64 {
    let fold = |it: &mut dyn Iterator<Item = f64>| {
        it.filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()))
    };
    match dtype {
        DType::F64 => fold(
            &mut raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))),
        ),
        DType::F32 => fold(
            &mut raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64),
        ),
        DType::F16 => fold(
            &mut raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()),
        ),
        DType::BF16 => fold(
            &mut raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()),
        ),
        _ => 0.0,
    }
}

fn option_error(option: &str, detail: impl Into<String>) -> Error {
    Error::invalid(Path::new(option), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_without_meaning_are_refused() {
        for (t, r) in [
            (Some(0.0), None),
            (Some(-1e-4), None),
            (Some(f64::INFINITY), None),
            (Some(f64::NAN), None),
            (None, Some(0.0)),
            (None, Some(1.0)),
            (None, Some(2.0)),
            (None, Some(f64::NAN)),
            (Some(1e-4), Some(1e-3)),
        ] {
            assert!(Mode::from_tolerances(t, r).is_err(), "{t:?} {r:?}");
        }
        assert_eq!(
            Mode::from_tolerances(Some(1e-4), None).unwrap(),
            Mode::Absolute(1e-4)
        );
        assert_eq!(
            Mode::from_tolerances(None, Some(0.5)).unwrap(),
            Mode::Relative(0.5)
        );
        let err = Mode::from_tolerances(None, Some(2.0))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--rel-tolerance: 2 is not between 0 and 1"),
            "{err}"
        );
    }

    /// `--wait` takes no value (fail at once), infinity, or a non-negative number of seconds.
    #[test]
    fn lock_waits_are_seconds_or_forever() {
        assert_eq!(lock_wait(None).unwrap(), LockWait::No);
        assert_eq!(lock_wait(Some(f64::INFINITY)).unwrap(), LockWait::Forever);
        assert_eq!(
            lock_wait(Some(2.5)).unwrap(),
            LockWait::For(std::time::Duration::from_millis(2500))
        );
        for bad in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            let err = lock_wait(Some(bad)).unwrap_err().to_string();
            assert!(err.starts_with("--wait: "), "{err}");
        }
    }

    #[test]
    fn threads_are_clamped_to_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let many = threads(100_000).unwrap();
        assert_eq!(many.count, cores);
        assert!(many.note.unwrap().contains("100000"));
        assert_eq!(
            threads(1).unwrap(),
            Threads {
                count: 1,
                note: None
            }
        );
        assert!(threads(0).is_err());
    }

    #[test]
    fn a_tolerance_past_the_largest_magnitude_is_refused() {
        let raw: Vec<u8> = [0.5f32, -2.0, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(check_tolerance_fits("m", "w", DType::F32, &raw, 1.9).is_ok());
        let err = check_tolerance_fits("m", "w", DType::F32, &raw, 2.0).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let zeros = vec![0u8; 8];
        assert!(check_tolerance_fits("m", "z", DType::F32, &zeros, 1.0).is_ok());
        let bf: Vec<u8> = half::bf16::from_f32(3.0).to_le_bytes().to_vec();
        assert!(check_tolerance_fits("m", "b", DType::BF16, &bf, 3.0).is_err());
    }

    #[test]
    fn output_paths_are_never_replaced_silently() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.safetensors");
        assert!(check_output(&file, false).is_ok());
        std::fs::write(&file, b"keep").unwrap();
        let err = check_output(&file, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert!(check_output(&file, true).is_ok());
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(check_output(&sub, false).is_ok());
        std::fs::write(sub.join("x"), b"").unwrap();
        assert!(check_output(&sub, true).is_err());
    }

    #[test]
    fn metadata_pairs_and_bases() {
        let map = metadata_from_pairs(&["a=1", "b=x=y"]).unwrap();
        assert_eq!(map["b"], "x=y");
        assert!(metadata_from_pairs(&["novalue"]).is_err());
        assert!(metadata_from_pairs(&["=v"]).is_err());
        assert!(metadata_from_json("[1]").is_err());
        assert_eq!(BaseChoice::from_arg("auto").unwrap(), BaseChoice::Auto);
        assert_eq!(
            BaseChoice::from_arg("m1").unwrap(),
            BaseChoice::Model("m1".into())
        );
        assert!(BaseChoice::from_arg("").is_err());
    }
}
