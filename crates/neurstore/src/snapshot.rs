//! One model as the catalog holds it, read in one snapshot and checked before anything is
//! rebuilt from it: every stored path against the stored-path rule, every row against the
//! model's manifest and its record in the packs.

use neurstore_storage::StorageError;
use neurstore_storage::catalog::{FileRow, ModelRow, Queries, TensorRow};

use crate::Store;
use crate::error::Result;
use crate::paths::check_row_path;

/// Everything needed to rebuild one model, read from one catalog snapshot.
pub(crate) struct Snapshot {
    pub(crate) model: ModelRow,
    pub(crate) files: Vec<FileRow>,
    pub(crate) tensors: Vec<TensorRow>,
}

impl Snapshot {
    /// The tensors of one file of the model, in position order.
    pub(crate) fn tensors_of(&self, path: &str) -> Vec<&TensorRow> {
        self.tensors.iter().filter(|t| t.path == path).collect()
    }
}

impl Store {
    /// The catalog rows of model `name`, read in one transaction, every stored path checked
    /// and the rows checked against the model's manifest (in the catalog and in the packs).
    pub(crate) fn snapshot(&self, name: &str) -> Result<Snapshot> {
        let (snapshot, record) = self.engine.read(|q| {
            let model = q
                .model(name)?
                .ok_or_else(|| StorageError::ModelNotFound(name.to_string()))?;
            let files = q.model_files(model.id)?;
            let tensors = q.model_tensors(model.id)?;
            // Before the manifest: a forger can recompute that, and the error names the path.
            check_paths(&model.name, &files, &tensors)?;
            q.check_manifest(&model, &files, &tensors)?;
            let record = q.model_record_location(model.id)?;
            let snapshot = Snapshot {
                files,
                tensors,
                model,
            };
            Ok((snapshot, record))
        })?;
        // The manifest record in the packs, which the catalog cannot rewrite, says the same.
        self.engine.check_model_record(
            &snapshot.model,
            &snapshot.files,
            &snapshot.tensors,
            record,
        )?;
        Ok(snapshot)
    }
}

/// Checks every file and tensor path of a model against the stored-path rule: nothing read
/// from a store is trusted to name a place.
fn check_paths(model: &str, files: &[FileRow], tensors: &[TensorRow]) -> Result<(), StorageError> {
    let paths = files
        .iter()
        .map(|f| &f.path)
        .chain(tensors.iter().map(|t| &t.path));
    for path in paths {
        check_row_path(model, path)?;
    }
    Ok(())
}
