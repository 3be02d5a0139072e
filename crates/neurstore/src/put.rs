//! `put`: import a model, storing each distinct tensor and file once, and each new tensor in the
//! cheapest of its encodings: standalone, or as a delta against the most similar stored tensor.
//!
//! Steps: read and validate every input file; key every tensor and file by content; find, for
//! each tensor the store lacks, its base candidates (by name in `--base NAME`, else through the
//! similarity index); encode (in parallel, in bounded batches) and check each encoding by
//! decoding it; append the blobs; publish the model in one catalog transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use neurstore_core::key::{Digest, file_key, tensor_key};
use neurstore_core::sketch;
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{ModelRow, NewObject, ObjectKind, ObjectRow, Queries};
use neurstore_storage::engine::WriteSession;
use neurstore_storage::pack::BlobLocation;
use neurstore_storage::record::ModelRecord;
use rayon::prelude::*;
use serde::Serialize;

use crate::Store;
use crate::error::Result;
use crate::import::TensorInput;
use crate::import::{SourceModel, read_source};
use crate::options::{BaseChoice, PutOptions, validate_name};
use crate::plan::{Item, Plan, plan_item};
use crate::progress::Progress;

/// Raw bytes encoded at once before their blobs are appended (bounds memory during `put`).
const BATCH_BYTES: u64 = 64 << 20;
/// Candidates the similarity index proposes per tensor, re-ranked exactly.
const CANDIDATES: usize = 4;

/// How one tensor was (or, in a dry run, would be) stored.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    /// File it belongs to.
    pub file: String,
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Raw bytes.
    pub raw_bytes: u64,
    /// Bytes written for it (0 when an identical tensor was already stored).
    pub stored_bytes: u64,
    /// Codec chosen.
    pub codec: &'static str,
    /// "model/tensor" of the delta base, if any.
    pub base: Option<String>,
    /// Stored bits per element.
    pub bits_per_element: f64,
    /// Largest absolute error of any element.
    pub max_error: f64,
    /// True when an identical tensor was already stored (exact dedup).
    pub deduplicated: bool,
}

/// What `put` did (or would do, in a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct PutReport {
    /// Model name.
    pub name: String,
    /// True for a dry run: nothing was written.
    pub dry_run: bool,
    /// "lossless", "abs:X" or "rel:X".
    pub mode: String,
    /// Lineage: the model its deltas were mostly taken against.
    pub base_model: Option<String>,
    /// Files imported.
    pub files: u64,
    /// Tensors imported.
    pub tensors: u64,
    /// Bytes of every file as imported: `tensor_bytes` + `other_bytes`.
    pub raw_bytes: u64,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// Bytes of everything else: the files' non-tensor bytes (safetensors headers, skeletons
    /// of other model files, plain files).
    pub other_bytes: u64,
    /// Objects (tensors and files) newly stored.
    pub new_objects: u64,
    /// Objects already in the store (exact duplicates), referenced instead.
    pub deduplicated_objects: u64,
    /// New tensors stored as deltas.
    pub delta_tensors: u64,
    /// Bytes appended to pack files.
    pub stored_bytes_added: u64,
    /// raw_bytes / stored_bytes_added (0 when nothing new was stored).
    pub ratio: f64,
    /// True when every object was already stored: nothing new was (or would be) written.
    pub fully_deduplicated: bool,
    /// Largest absolute error of any element of any tensor.
    pub max_error: f64,
    /// Tensors looked up in the similarity index.
    pub tensors_searched: u64,
    /// Seconds spent in index searches.
    pub search_seconds: f64,
    /// Per tensor.
    pub tensor_reports: Vec<TensorReport>,
}

/// Every file of the input as an item, each followed by its tensors, keyed by exact content.
fn items_of(source: &SourceModel) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    for file in &source.files {
        items.push(Item::file(&file.rel_path, file.object_bytes()));
        for t in file.tensors() {
            items.push(Item::tensor(
                &file.rel_path,
                t.name,
                t.dtype,
                t.shape,
                t.bytes,
            ));
        }
    }
    items.par_iter_mut().for_each(|item| {
        item.exact_key = match item.dtype {
            Some(dtype) => tensor_key(dtype, &item.shape, item.raw),
            None => file_key(item.raw),
        }
    });
    items
}

/// The items of a put's input and what the store already holds of them.
struct Inventory<'a> {
    /// Every file and tensor, in file order (each file followed by its tensors).
    items: Vec<Item<'a>>,
    /// Stored objects found under an item's exact or store key.
    existing: HashMap<Digest, ObjectRow>,
}

impl Inventory<'_> {
    /// The key of the stored object an item can share, if the store has one.
    fn stored_as(&self, item: &Item) -> Option<Digest> {
        [item.exact_key, item.store_key]
            .into_iter()
            .find(|k| self.existing.contains_key(k))
    }

    /// The key an item is recorded under: the stored object it shares, else its new one.
    fn key_of(&self, item: &Item) -> Digest {
        self.stored_as(item).unwrap_or(item.store_key)
    }

    /// The first item of each content the store lacks, by index.
    fn missing(&self) -> Vec<usize> {
        let mut seen: HashSet<Digest> = HashSet::new();
        (0..self.items.len())
            .filter(|&i| {
                self.stored_as(&self.items[i]).is_none() && seen.insert(self.items[i].store_key)
            })
            .collect()
    }
}

/// Base candidates of the items the store lacks.
struct Candidates {
    /// Candidate object ids by item index.
    by_item: HashMap<usize, Vec<i64>>,
    /// Their catalog rows.
    rows: HashMap<i64, ObjectRow>,
    /// Tensors looked up in the similarity index.
    searched: u64,
    /// Seconds spent finding candidates.
    search_seconds: f64,
}

impl Candidates {
    /// Item `i`'s candidates whose chains a delta may still extend.
    fn of(&self, i: usize, max_chain_depth: u32) -> Vec<&ObjectRow> {
        self.by_item
            .get(&i)
            .into_iter()
            .flatten()
            .filter_map(|id| self.rows.get(id))
            .filter(|row| row.chain_depth < max_chain_depth)
            .collect()
    }
}

/// The plan of each new content, by store key, with its catalog row once appended.
type Plans = HashMap<Digest, (Plan, Option<NewObject>)>;

impl Store {
    /// Imports the model file (safetensors, ONNX, PyTorch zip checkpoint, GGUF) or model
    /// directory at `path` as model `name`. A refused file (corrupt, a pickle naming a forbidden
    /// global, a legacy checkpoint) fails the put before anything is written.
    pub fn put(
        &self,
        name: &str,
        path: &Path,
        options: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<PutReport> {
        self.check_put(name, options)?;
        let source = read_source(path, options.follow_symlinks)?;
        self.put_source(name, &source, options, progress)
    }

    /// Imports tensors held in memory as model `name`, stored as one safetensors file
    /// `model.safetensors` (tensors in the given order, `metadata` as its `__metadata__`).
    pub fn put_tensors(
        &self,
        name: &str,
        tensors: &[TensorInput],
        metadata: Option<&BTreeMap<String, String>>,
        options: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<PutReport> {
        self.check_put(name, options)?;
        let source = crate::import::from_tensors(tensors, metadata)?;
        self.put_source(name, &source, options, progress)
    }

    /// Refuses a bad name, bad options, or a name a model already has.
    fn check_put(&self, name: &str, options: &PutOptions) -> Result<()> {
        validate_name(name)?;
        options.check()?;
        if self.engine.read(|q| q.model(name))?.is_some() {
            return Err(StorageError::ModelExists(name.to_string()).into());
        }
        Ok(())
    }

    /// Stores (or, in a dry run, plans) a model read and validated by `put` or `put_tensors`.
    /// Steps: look up the named base model's tensors; key every item and find what the store
    /// already holds; find base candidates for the rest; plan and append the rest, batch by
    /// batch; report; publish the model in one catalog transaction.
    fn put_source(
        &self,
        name: &str,
        source: &SourceModel,
        options: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<PutReport> {
        let base_tensors = self.base_tensors(&options.base)?;
        let inventory = self.inventory(source, options)?;
        let missing = inventory.missing();
        let candidates = self.candidates(&inventory.items, &missing, &base_tensors, options)?;
        let mut session = if options.dry_run {
            None
        } else {
            Some(self.engine.begin_write()?)
        };
        let plans = self.plan_and_append(
            &inventory.items,
            &missing,
            &candidates,
            session.as_mut(),
            options,
            progress,
        )?;
        let base_model = self.lineage(options, &plans)?;
        let mut report = self.put_report(
            name,
            options,
            source,
            &inventory.items,
            &inventory.existing,
            &plans,
            base_model.clone(),
        )?;
        report.tensors_searched = candidates.searched;
        report.search_seconds = candidates.search_seconds;
        if let Some(session) = session {
            let model = model_row(name, source, options, &report, base_model);
            publish(session, &model, source, &inventory, &plans)?;
        }
        Ok(report)
    }

    /// Keys every item of the input under the put's mode (refusing, without `--force`, a
    /// bound that would store a tensor as a constant) and finds which contents the store
    /// already has, exactly or under the same bound.
    fn inventory<'s>(
        &self,
        source: &'s SourceModel,
        options: &PutOptions,
    ) -> Result<Inventory<'s>> {
        let mut items = items_of(source);
        for item in &mut items {
            item.set_mode(options.mode);
        }
        if !options.force {
            check_tolerances_fit(&items)?;
        }
        let mut existing: HashMap<Digest, ObjectRow> = HashMap::new();
        self.engine.read(|q| {
            for item in &items {
                for key in [item.exact_key, item.store_key] {
                    if let std::collections::hash_map::Entry::Vacant(slot) = existing.entry(key)
                        && let Some(row) = q.object_by_key(&key)?
                    {
                        slot.insert(row);
                    }
                }
            }
            Ok(())
        })?;
        // Deduplicating against a blob that is gone would make a model that cannot be read.
        for row in existing.values() {
            self.engine
                .check_present(row, &format!("stored object {} (to share)", row.id))?;
        }
        Ok(Inventory { items, existing })
    }

    /// Candidate bases of the `missing` items: paired by name with the named base model's
    /// tensors first, else proposed by the similarity index.
    fn candidates(
        &self,
        items: &[Item],
        missing: &[usize],
        base_tensors: &HashMap<String, ObjectRow>,
        options: &PutOptions,
    ) -> Result<Candidates> {
        let search_started = Instant::now();
        let mut searched = 0u64;
        let mut by_item: HashMap<usize, Vec<i64>> = HashMap::new();
        if options.base != BaseChoice::None {
            let wants_search: Vec<usize> = missing
                .iter()
                .copied()
                .filter(|&i| {
                    let item = &items[i];
                    let Some(dtype) = item.dtype.filter(|d| sketch::indexable(*d)) else {
                        return false;
                    };
                    match base_tensors.get(&item.name) {
                        Some(row)
                            if row.kind == (ObjectKind::Tensor { dtype })
                                && row.shape == item.shape
                                && row.chain_depth < options.max_chain_depth =>
                        {
                            by_item.insert(i, vec![row.id]);
                            false
                        }
                        // Tensors too small for a delta to pay are neither indexed nor searched.
                        _ => sketch::worth_sketching(dtype, item.elements()),
                    }
                })
                .collect();
            if !wants_search.is_empty() {
                self.engine.with_index(|index| {
                    for &i in &wants_search {
                        let item = &items[i];
                        let dtype = item.dtype.expect("filtered above");
                        let query = sketch::sketch(dtype, item.raw).expect("indexable");
                        let found = index.search(dtype, item.elements(), &query, CANDIDATES);
                        // A candidate at least as far from the tensor as the tensor is from zero
                        // leaves a delta with as much energy as the tensor itself: it cannot win,
                        // so it is not worth decoding (unrelated models of equal shapes).
                        let energy: f32 = query.iter().map(|v| v * v).sum();
                        let useful = found.into_iter().filter(|&(_, d)| d < energy);
                        by_item.insert(i, useful.map(|(id, _)| id).collect());
                        searched += 1;
                    }
                })?;
            }
        }
        let search_seconds = search_started.elapsed().as_secs_f64();
        let rows: HashMap<i64, ObjectRow> = self.engine.read(|q| {
            let mut rows = HashMap::new();
            for id in by_item.values().flatten() {
                if let Some(row) = q.object(*id)? {
                    rows.insert(*id, row);
                }
            }
            Ok(rows)
        })?;
        Ok(Candidates {
            by_item,
            rows,
            searched,
            search_seconds,
        })
    }

    /// Plans (encodes and checks, in parallel) the `missing` items, then appends their blobs
    /// when writing, batch by batch; a written plan keeps only its length (bounds memory to
    /// one batch).
    fn plan_and_append(
        &self,
        items: &[Item],
        missing: &[usize],
        candidates: &Candidates,
        mut session: Option<&mut WriteSession<'_>>,
        options: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<Plans> {
        let total: u64 = missing.iter().map(|&i| items[i].raw.len() as u64).sum();
        progress.start(
            if options.dry_run {
                "planning"
            } else {
                "storing"
            },
            total,
        );
        let mut plans: Plans = HashMap::new();
        for batch in batches(missing, items) {
            let planned: Vec<Plan> = batch
                .par_iter()
                .map(|&i| {
                    let rows = candidates.of(i, options.max_chain_depth);
                    let plan = plan_item(self, &items[i], &rows);
                    progress.advance(items[i].raw.len() as u64);
                    plan
                })
                .collect::<Result<_>>()?;
            for (&i, mut plan) in batch.iter().zip(planned) {
                let item = &items[i];
                let new_object = match session.as_deref_mut() {
                    Some(session) => Some(append_planned(session, item, &plan, options)?),
                    None => None,
                };
                plan.bytes = None;
                plans.insert(item.store_key, (plan, new_object));
            }
        }
        progress.finish();
        Ok(plans)
    }

    /// Lineage: the model named as base, else the model most delta bases belong to.
    fn lineage(&self, options: &PutOptions, plans: &Plans) -> Result<Option<String>> {
        match &options.base {
            BaseChoice::Model(m) => Ok(Some(m.clone())),
            _ => self.majority_base_model(
                plans
                    .values()
                    .filter_map(|(p, _)| p.base.as_ref().map(|b| b.id)),
            ),
        }
    }

    /// Tensors of the model named as base, by tensor name.
    fn base_tensors(&self, choice: &BaseChoice) -> Result<HashMap<String, ObjectRow>> {
        let BaseChoice::Model(name) = choice else {
            return Ok(HashMap::new());
        };
        Ok(self.engine.read(|q| {
            let model = q
                .model(name)?
                .ok_or_else(|| StorageError::ModelNotFound(name.clone()))?;
            Ok(q.model_tensors(model.id)?
                .into_iter()
                .map(|t| (t.name, t.object))
                .collect())
        })?)
    }

    /// The model that first uses the most of these base objects (ties to the first name).
    fn majority_base_model(&self, bases: impl Iterator<Item = i64>) -> Result<Option<String>> {
        let bases: Vec<i64> = bases.collect();
        Ok(self.engine.read(|q| {
            let mut votes: BTreeMap<String, u64> = BTreeMap::new();
            for id in bases {
                if let Some((model, _)) = q.first_user(id)? {
                    *votes.entry(model).or_default() += 1;
                }
            }
            Ok(votes
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(m, _)| m))
        })?)
    }

    /// What the put stored (or would store), per tensor and in total.
    #[allow(clippy::too_many_arguments)]
    fn put_report(
        &self,
        name: &str,
        options: &PutOptions,
        source: &SourceModel,
        items: &[Item],
        existing: &HashMap<Digest, ObjectRow>,
        plans: &Plans,
        base_model: Option<String>,
    ) -> Result<PutReport> {
        let base_names: HashMap<i64, String> = self.engine.read(|q| {
            let mut names = HashMap::new();
            for (plan, _) in plans.values() {
                if let Some(base) = &plan.base {
                    names.insert(base.id, crate::inspect::base_label(q, base.id)?);
                }
            }
            Ok(names)
        })?;
        let mut written: HashSet<Digest> = HashSet::new();
        let mut tensor_reports = Vec::new();
        let mut stored_bytes_added = 0;
        for item in items {
            let plan = plans.get(&item.store_key).map(|(p, _)| p);
            let fresh = plan.is_some() && written.insert(item.store_key);
            let stored = match (plan, fresh) {
                (Some(p), true) => p.stored_len,
                _ => 0,
            };
            stored_bytes_added += stored;
            let Some(dtype) = item.dtype else { continue };
            let existing_row = [item.exact_key, item.store_key]
                .iter()
                .find_map(|k| existing.get(k));
            let (codec, max_error, base) = match (plan, existing_row) {
                (Some(p), _) => (
                    p.codec.name(),
                    p.max_error,
                    p.base.as_ref().and_then(|b| base_names.get(&b.id).cloned()),
                ),
                (None, Some(row)) => (row.codec.name(), row.max_error, None),
                (None, None) => ("?", 0.0, None),
            };
            let elements = item.elements().max(1);
            tensor_reports.push(TensorReport {
                file: item.file.to_string(),
                name: item.name.clone(),
                dtype: dtype.to_string(),
                raw_bytes: item.raw.len() as u64,
                stored_bytes: stored,
                codec,
                base,
                bits_per_element: stored as f64 * 8.0 / elements as f64,
                max_error,
                deduplicated: plan.is_none(),
            });
        }
        let tensor_bytes: u64 = tensor_reports.iter().map(|t| t.raw_bytes).sum();
        let raw_bytes: u64 = source.files.iter().map(|f| f.bytes.len() as u64).sum();
        let new_objects = plans.len() as u64;
        Ok(PutReport {
            name: name.to_string(),
            dry_run: options.dry_run,
            mode: options.mode.label(),
            base_model,
            files: source.files.len() as u64,
            tensors: tensor_reports.len() as u64,
            raw_bytes,
            tensor_bytes,
            other_bytes: raw_bytes.saturating_sub(tensor_bytes),
            new_objects,
            deduplicated_objects: items.len() as u64 - new_objects,
            delta_tensors: plans.values().filter(|(p, _)| p.base.is_some()).count() as u64,
            stored_bytes_added,
            ratio: if stored_bytes_added == 0 {
                0.0
            } else {
                raw_bytes as f64 / stored_bytes_added as f64
            },
            fully_deduplicated: new_objects == 0,
            max_error: tensor_reports
                .iter()
                .map(|t| t.max_error)
                .fold(0.0, f64::max),
            tensors_searched: 0,
            search_seconds: 0.0,
            tensor_reports,
        })
    }
}

/// The catalog row of the new model.
fn model_row(
    name: &str,
    source: &SourceModel,
    options: &PutOptions,
    report: &PutReport,
    base_model: Option<String>,
) -> ModelRow {
    ModelRow {
        id: 0,
        name: name.to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        source_format: source.format.to_string(),
        metadata: serde_json::Value::Object(options.metadata.clone()).to_string(),
        raw_bytes: report.tensor_bytes,
        base_model,
        mode: options.mode.label(),
    }
}

/// Publishes the model: appends its manifest record, then in one catalog transaction inserts
/// the new objects (in pack order), the model, its files and tensors, and seals it.
fn publish(
    mut session: WriteSession<'_>,
    model: &ModelRow,
    source: &SourceModel,
    inventory: &Inventory,
    plans: &Plans,
) -> Result<()> {
    let items = &inventory.items;
    let record = model_record(
        model,
        source,
        items,
        |item| inventory.key_of(item),
        session.seq()?,
    );
    let record_at = session.append_model(&record)?;
    session.commit(|tx| {
        let mut ids: HashMap<Digest, i64> = inventory
            .existing
            .iter()
            .map(|(k, row)| (*k, row.id))
            .collect();
        let mut new: Vec<&NewObject> = plans.values().filter_map(|(_, o)| o.as_ref()).collect();
        new.sort_by_key(|o| (o.location.pack_id, o.location.offset));
        for object in new {
            ids.insert(object.key, tx.insert_object(object)?);
        }
        let id_of = |item: &Item| -> i64 { ids[&inventory.key_of(item)] };
        let model_id = tx.insert_model(model)?;
        let mut next = items.iter();
        for file in &source.files {
            let head = next.next().expect("one item per file");
            tx.insert_model_file(model_id, &file.rel_path, file.kind(), id_of(head))?;
            for (position, t) in file.tensors().iter().enumerate() {
                let item = next.next().expect("one item per tensor");
                tx.insert_model_tensor(
                    model_id,
                    &file.rel_path,
                    position as i64,
                    t.name,
                    id_of(item),
                )?;
            }
        }
        tx.seal_model(model_id)?;
        tx.set_model_record(model_id, record.seq, record_at)
    })?;
    Ok(())
}

/// Appends a planned item's blob as an object record and returns its catalog row to insert.
fn append_planned(
    session: &mut WriteSession<'_>,
    item: &Item,
    plan: &Plan,
    options: &PutOptions,
) -> Result<NewObject> {
    let stored = plan.stored_bytes(item.raw);
    let mut object = NewObject {
        key: item.store_key,
        kind: match item.dtype {
            Some(dtype) => ObjectKind::Tensor { dtype },
            None => ObjectKind::File,
        },
        shape: item.shape.clone(),
        raw_len: item.raw.len() as u64,
        codec: plan.codec,
        location: BlobLocation {
            pack_id: 0,
            offset: 0,
            len: 0,
        },
        checksum: [0; 32],
        base: plan.base.as_ref().map(|b| b.id),
        chain_depth: plan.chain_depth,
        tolerance: plan.tolerance,
        max_error: plan.max_error,
        decoded_key: plan.decoded_key,
        base_key: plan.base.as_ref().map(|b| b.decoded_key),
        sketch: plan
            .sketch
            .clone()
            .filter(|_| plan.chain_depth < options.max_chain_depth),
    };
    let (location, checksum) = session.append_object(&object.meta(), stored)?;
    object.location = location;
    object.checksum = checksum;
    Ok(object)
}

/// The manifest record of a model about to be committed: every row the catalog will hold.
fn model_record(
    model: &ModelRow,
    source: &SourceModel,
    items: &[Item],
    key_of: impl Fn(&Item) -> Digest,
    seq: u64,
) -> ModelRecord {
    let mut files = Vec::new();
    let mut tensors = Vec::new();
    let mut next = items.iter();
    for file in &source.files {
        let head = next.next().expect("one item per file");
        files.push((file.rel_path.clone(), file.kind().tag(), key_of(head)));
        for (position, t) in file.tensors().iter().enumerate() {
            let item = next.next().expect("one item per tensor");
            tensors.push((
                file.rel_path.clone(),
                position as u64,
                t.name.to_string(),
                key_of(item),
            ));
        }
    }
    // The catalog lists files by path; the record follows the same order.
    files.sort_by(|a, b| a.0.cmp(&b.0));
    ModelRecord {
        seq,
        name: model.name.clone(),
        created_unix: model.created_unix,
        source_format: model.source_format.clone(),
        metadata: model.metadata.clone(),
        raw_bytes: model.raw_bytes,
        base_model: model.base_model.clone(),
        mode: model.mode.clone(),
        files,
        tensors,
    }
}

/// Without `--force`, a bound at or above a tensor's largest magnitude is refused.
fn check_tolerances_fit(items: &[Item]) -> Result<()> {
    items
        .par_iter()
        .try_for_each(|item| match (item.dtype, item.tolerance) {
            (Some(dtype), Some(tol)) => {
                crate::options::check_tolerance_fits(item.file, &item.name, dtype, item.raw, tol)
            }
            _ => Ok(()),
        })
}

/// Cuts item indices into batches of at most `BATCH_BYTES` raw bytes (at least one item each).
fn batches<'a>(indices: &'a [usize], items: &[Item]) -> Vec<&'a [usize]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (n, &i) in indices.iter().enumerate() {
        let len = items[i].raw.len() as u64;
        if n > start && size + len > BATCH_BYTES {
            out.push(&indices[start..n]);
            (start, size) = (n, 0);
        }
        size += len;
    }
    if start < indices.len() {
        out.push(&indices[start..]);
    }
    out
}
