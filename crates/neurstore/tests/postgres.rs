//! Stores in PostgreSQL, against a real server (common/pg.rs says which): the same put, get,
//! dedup, deltas, rm, gc and verify as a store directory; concurrent writers; a failed put
//! leaving nothing; the SQL views; pg_dump and pg_restore carrying the models.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::pg;
use common::{Rng, safetensors_file};
use neurstore::{LockWait, Mode, NoProgress, PutOptions, Store, StoreOptions};
use neurstore_core::dtype::DType;

/// `n` F32 matrices of 64 x 64 (plus a tiny bias), all from `seed`; `noise` moves every
/// element by about that much, as a fine-tune would.
fn tensors(seed: u64, n: usize, noise: f32) -> Vec<common::Tensor> {
    let mut base = Rng::new(seed);
    let mut tune = Rng::new(seed ^ 0xfeed);
    let mut tensors = Vec::new();
    for i in 0..n {
        let data: Vec<u8> = (0..64 * 64)
            .flat_map(|_| {
                let v = base.normal() as f32 * 0.02 + tune.normal() as f32 * noise;
                v.to_le_bytes()
            })
            .collect();
        tensors.push((format!("layer{i}.weight"), DType::F32, vec![64, 64], data));
    }
    tensors.push((
        "bias".to_string(),
        DType::F32,
        vec![4],
        [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    ));
    tensors
}

/// The safetensors file of [`tensors`].
fn model(seed: u64, n: usize, noise: f32) -> Vec<u8> {
    safetensors_file(&tensors(seed, n, noise), None)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn writer(url: &str) -> Store {
    Store::open_with(
        Path::new(url),
        StoreOptions {
            write: true,
            wait: LockWait::Forever,
            ..Default::default()
        },
    )
    .unwrap()
}

fn get_bytes(store: &Store, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.out.safetensors"));
    let _ = std::fs::remove_file(&out);
    store.get(name, &out, &NoProgress).unwrap();
    std::fs::read(&out).unwrap()
}

/// Asserts that model `name` reads back as the bytes of the file at `original`.
fn reads_back(store: &Store, name: &str, original: &Path, dir: &Path) {
    assert_eq!(
        get_bytes(store, name, dir),
        std::fs::read(original).unwrap(),
        "{name} did not read back byte for byte"
    );
}

fn count(url: &str, sql: &str) -> i64 {
    pg::client(url).query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn a_store_in_postgres_round_trips_dedups_and_collects() {
    let Some(server) = pg::server() else { return };
    let url = pg::fresh_database(&server, "ns_round_trip");
    let dir = tempfile::tempdir().unwrap();
    Store::init(Path::new(&url)).unwrap();
    let base = write(dir.path(), "base.safetensors", &model(1, 6, 0.0));
    let tune = write(dir.path(), "tune.safetensors", &model(1, 6, 1e-3));
    let tune2 = write(dir.path(), "tune2.safetensors", &model(1, 6, 2e-3));
    let store = writer(&url);
    store
        .put("base", &base, &PutOptions::default(), &NoProgress)
        .unwrap();
    let lossless = store
        .put("tune", &tune, &PutOptions::default(), &NoProgress)
        .unwrap();
    assert!(lossless.delta_tensors > 0, "{lossless:?}");
    let bounded = PutOptions {
        mode: Mode::Absolute(1e-4),
        ..Default::default()
    };
    let report = store
        .put("tune-1e-4", &tune2, &bounded, &NoProgress)
        .unwrap();
    assert!(report.ratio > 4.0, "{report:?}");
    let again = store
        .put("base-again", &base, &PutOptions::default(), &NoProgress)
        .unwrap();
    assert!(again.fully_deduplicated, "{again:?}");

    reads_back(&store, "base", &base, dir.path());
    reads_back(&store, "tune", &tune, dir.path());
    let verify = store.verify(&NoProgress).unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    assert_eq!(verify.models, 4);

    // The SQL views show what the store holds.
    assert_eq!(count(&url, "SELECT count(*) FROM neurstore.models"), 4);
    let bases: Vec<String> = pg::client(&url)
        .query_one(
            "SELECT base_models FROM neurstore.models WHERE name = 'tune-1e-4'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !bases.is_empty() && bases.iter().all(|b| b == "base" || b == "tune"),
        "{bases:?}"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM neurstore.tensors WHERE model = 'tune-1e-4' AND codec = 'quantized' \
             AND base_model IN ('base', 'tune') AND max_error <= 1e-4"
        ),
        6
    );

    // Removing and collecting returns the space, and the rest still reads back exactly.
    let chunk_bytes = |url: &str| {
        count(
            url,
            "SELECT CAST(coalesce(sum(length(bytes)), 0) AS bigint) FROM neurstore_data.pack_chunks",
        )
    };
    let before = chunk_bytes(&url);
    store.remove("tune").unwrap();
    store.remove("tune-1e-4").unwrap();
    let gc = store.gc(&NoProgress).unwrap();
    assert!(gc.pack_bytes_after < gc.pack_bytes_before, "{gc:?}");
    assert!(chunk_bytes(&url) < before);
    drop(store);
    let reader = Store::open(Path::new(&url)).unwrap();
    reads_back(&reader, "base", &base, dir.path());
    assert!(reader.verify(&NoProgress).unwrap().problems.is_empty());
}

#[test]
fn concurrent_writers_both_commit_and_store_shared_tensors_once() {
    let Some(server) = pg::server() else { return };
    let url = pg::fresh_database(&server, "ns_concurrent");
    let dir = tempfile::tempdir().unwrap();
    Store::init(Path::new(&url)).unwrap();
    // Two models sharing four of their six matrices.
    let a = write(dir.path(), "a.safetensors", &model(7, 6, 0.0));
    // b: the first four matrices of a and the bias (the same bytes), and two of its own.
    let mut b_tensors = tensors(7, 6, 0.0);
    b_tensors.drain(4..6);
    for (name, dtype, shape, data) in tensors(8, 2, 0.0).into_iter().take(2) {
        b_tensors.push((format!("own.{name}"), dtype, shape, data));
    }
    let b_bytes = safetensors_file(&b_tensors, None);
    let b = write(dir.path(), "b.safetensors", &b_bytes);
    let url = Arc::new(url);
    let handles: Vec<_> = [("a", a.clone()), ("b", b.clone())]
        .into_iter()
        .map(|(name, path)| {
            let url = url.clone();
            std::thread::spawn(move || {
                writer(&url)
                    .put(name, &path, &PutOptions::default(), &NoProgress)
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let reader = Store::open(Path::new(url.as_str())).unwrap();
    reads_back(&reader, "a", &a, dir.path());
    reads_back(&reader, "b", &b, dir.path());
    // a: 6 matrices + bias; b adds its 2 own matrices (the shared four and the bias are
    // stored once).
    let stats = reader.stats().unwrap();
    assert_eq!(stats.unique_tensors, 9, "{stats:?}");
}

#[test]
fn a_failed_put_commits_nothing_and_a_second_writer_waits_or_is_refused() {
    let Some(server) = pg::server() else { return };
    let url = pg::fresh_database(&server, "ns_failed_put");
    let dir = tempfile::tempdir().unwrap();
    Store::init(Path::new(&url)).unwrap();
    let good = model(3, 4, 0.0);
    let truncated = write(dir.path(), "bad.safetensors", &good[..good.len() - 100]);
    let store = writer(&url);
    let models_before = count(&url, "SELECT count(*) FROM neurstore_data.models");
    let err = store
        .put("bad", &truncated, &PutOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_eq!(
        count(&url, "SELECT count(*) FROM neurstore_data.models"),
        models_before
    );

    // While this writer is open, another one is refused at once (naming the holder), and a
    // reader is not blocked.
    let refused = Store::open_with(
        Path::new(&url),
        StoreOptions {
            write: true,
            ..Default::default()
        },
    )
    .err()
    .expect("a second writer was let in");
    assert!(refused.to_string().contains("locked"), "{refused}");
    assert!(
        Store::open(Path::new(&url))
            .unwrap()
            .list()
            .unwrap()
            .is_empty()
    );

    // No store in a database without one; init refuses a database that has one.
    let empty = pg::fresh_database(&server, "ns_empty");
    let missing = Store::open(Path::new(&empty))
        .err()
        .expect("opened nothing");
    assert!(missing.to_string().contains("neurstore init"), "{missing}");
    let twice = Store::init(Path::new(&url)).unwrap_err();
    assert!(twice.to_string().contains("already"), "{twice}");
}

#[test]
fn pg_dump_and_pg_restore_carry_the_models() {
    let Some(server) = pg::server() else { return };
    let url = pg::fresh_database(&server, "ns_dumped");
    let dir = tempfile::tempdir().unwrap();
    Store::init(Path::new(&url)).unwrap();
    let base = write(dir.path(), "base.safetensors", &model(5, 4, 0.0));
    let tune = write(dir.path(), "tune.safetensors", &model(5, 4, 1e-3));
    {
        let store = writer(&url);
        for (name, path) in [("base", &base), ("tune", &tune)] {
            store
                .put(name, path, &PutOptions::default(), &NoProgress)
                .unwrap();
        }
    }
    let dump = dir.path().join("store.dump");
    let status = pg::program("pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&url)
        .status()
        .unwrap();
    assert!(status.success());
    let restored = pg::fresh_database(&server, "ns_restored");
    let status = pg::program("pg_restore")
        .args(["--no-owner", "-d", &restored])
        .arg(&dump)
        .status()
        .unwrap();
    assert!(status.success());
    let store = Store::open(Path::new(&restored)).unwrap();
    reads_back(&store, "base", &base, dir.path());
    reads_back(&store, "tune", &tune, dir.path());
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
}

#[test]
fn grants_and_row_level_security_decide_who_sees_which_models() {
    let Some(server) = pg::server() else { return };
    let url = pg::fresh_database(&server, "ns_rights");
    let dir = tempfile::tempdir().unwrap();
    Store::init(Path::new(&url)).unwrap();
    {
        let store = writer(&url);
        for (name, seed) in [("alice-model", 11), ("bob-model", 12)] {
            let path = write(
                dir.path(),
                &format!("{name}.safetensors"),
                &model(seed, 2, 0.0),
            );
            store
                .put(name, &path, &PutOptions::default(), &NoProgress)
                .unwrap();
        }
    }
    // The documented example (docs/postgres.md): a reader role, and a policy showing each
    // role the models named after it.
    let mut admin = pg::client(&url);
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS alice; DROP ROLE IF EXISTS mallory;
             CREATE ROLE alice LOGIN; CREATE ROLE mallory LOGIN;
             GRANT USAGE ON SCHEMA neurstore, neurstore_data TO alice;
             GRANT SELECT ON ALL TABLES IN SCHEMA neurstore, neurstore_data TO alice;
             ALTER TABLE neurstore_data.models ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_models ON neurstore_data.models FOR SELECT
                 USING (name LIKE current_user || '-%');",
        )
        .unwrap();
    let as_role = |role: &str| url.replacen("postgres@", &format!("{role}@"), 1);
    let alice = Store::open(Path::new(&as_role("alice"))).unwrap();
    let names: Vec<String> = alice.list().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["alice-model".to_string()]);
    reads_back(
        &alice,
        "alice-model",
        &dir.path().join("alice-model.safetensors"),
        dir.path(),
    );
    let hidden = alice
        .get("bob-model", &dir.path().join("stolen"), &NoProgress)
        .unwrap_err();
    assert!(hidden.to_string().contains("no model named"), "{hidden}");
    let visible: i64 = pg::client(&as_role("alice"))
        .query_one("SELECT count(*) FROM neurstore.models", &[])
        .unwrap()
        .get(0);
    assert_eq!(visible, 1);
    // A role without grants cannot read the store at all, nor write it.
    let refused = Store::open(Path::new(&as_role("mallory")))
        .err()
        .expect("a role without grants opened the store");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    let writer_refused = Store::open_with(
        Path::new(&as_role("alice")),
        StoreOptions {
            write: true,
            ..Default::default()
        },
    )
    .and_then(|s| {
        let path = write(dir.path(), "x.safetensors", &model(13, 1, 0.0));
        s.put("alice-x", &path, &PutOptions::default(), &NoProgress)
    });
    assert!(writer_refused.is_err(), "a read-only role wrote a model");
    drop(admin);
}
