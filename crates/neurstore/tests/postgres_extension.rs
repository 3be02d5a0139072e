//! The `neurstore` extension against a real server (common/pg.rs says which): its functions
//! run inside the caller's transaction, so a rolled-back or failed put leaves nothing, not even
//! pack bytes; concurrent puts both commit with shared tensors stored once; models read back
//! byte for byte, through SQL and through the client side alike; bad input is an ERROR with a
//! fitting SQLSTATE and never a crash of the backend.
//!
//! The extension must be installed into the server (`scripts/postgres.sh extension`); where it
//! is not, the tests skip, unless `NEURSTORE_TEST_EXTENSION` is set (CI sets it), where that is
//! a failure.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::pg;
use common::{Rng, safetensors_file};
use neurstore::{LockWait, NoProgress, PutOptions, Store, StoreOptions};
use neurstore_core::dtype::DType;
use postgres::Client;

/// `n` F32 matrices of 32 x 32 from `seed`, named `{prefix}{i}`, plus a shared bias.
fn tensors(seed: u64, prefix: &str, n: usize) -> Vec<common::Tensor> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<common::Tensor> = (0..n)
        .map(|i| {
            let data = (0..32 * 32)
                .flat_map(|_| (rng.normal() as f32 * 0.02).to_le_bytes())
                .collect();
            (format!("{prefix}{i}"), DType::F32, vec![32, 32], data)
        })
        .collect();
    out.push((
        "bias".into(),
        DType::F32,
        vec![2],
        [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    out
}

fn model(seed: u64, n: usize) -> Vec<u8> {
    safetensors_file(&tensors(seed, "layer", n), None)
}

/// A fresh database with the extension created in it, or `None` (the test returns) where the
/// server or the extension is missing outside CI.
fn database(name: &str) -> Option<String> {
    let server = pg::server()?;
    if !pg::extension_available(&server) {
        return None;
    }
    let url = pg::fresh_database(&server, name);
    pg::client(&url)
        .batch_execute("CREATE EXTENSION neurstore")
        .unwrap();
    Some(url)
}

fn put_bytes(c: &mut Client, name: &str, bytes: &[u8]) -> serde_json::Value {
    let text: String = c
        .query_one(
            "SELECT CAST(neurstore.put_bytes($1, $2) AS text)",
            &[&name, &bytes],
        )
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn get_bytes(c: &mut Client, name: &str) -> Vec<u8> {
    c.query_one("SELECT neurstore.get_bytes($1)", &[&name])
        .unwrap()
        .get(0)
}

fn json(c: &mut Client, sql: &str) -> serde_json::Value {
    let text: String = c
        .query_one(&format!("SELECT CAST({sql} AS text)"), &[])
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// The SQLSTATE and message of a statement that must fail.
fn failure(
    c: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> (String, String) {
    let e = c.query(sql, params).expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Bytes of the pack chunks' table with its TOAST, after a VACUUM FULL keeps only live rows.
fn chunk_table_bytes(c: &mut Client) -> i64 {
    c.batch_execute("VACUUM FULL neurstore_data.pack_chunks")
        .unwrap();
    count(
        c,
        "SELECT pg_total_relation_size('neurstore_data.pack_chunks')",
    )
}

/// A directory the server's own user may read and write (the tests may run as another user).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn shared_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[test]
fn a_rolled_back_or_failed_put_leaves_no_rows_and_no_chunk_bytes() {
    let Some(url) = database("ns_ext_rollback") else {
        return;
    };
    let mut c = pg::client(&url);
    // The first put creates the store's tables: rolled back, not even they remain.
    c.batch_execute("BEGIN").unwrap();
    put_bytes(&mut c, "first", &model(1, 4));
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'neurstore_data'"
        ),
        0
    );

    put_bytes(&mut c, "kept", &model(1, 4));
    let before = chunk_table_bytes(&mut c);
    let rows = |c: &mut Client| {
        count(
            c,
            "SELECT (SELECT count(*) FROM neurstore_data.objects) \
                  + (SELECT count(*) FROM neurstore_data.models) \
                  + (SELECT count(*) FROM neurstore_data.pack_chunks) \
                  + (SELECT count(*) FROM neurstore_data.packs)",
        )
    };
    let rows_before = rows(&mut c);

    c.batch_execute("BEGIN").unwrap();
    let report = put_bytes(&mut c, "rolled-back", &model(2, 6));
    assert!(
        report["stored_bytes_added"].as_u64().unwrap() > 20_000,
        "{report}"
    );
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(rows(&mut c), rows_before);
    assert_eq!(chunk_table_bytes(&mut c), before);

    // A put, then a failing statement: the transaction commits nothing.
    c.batch_execute("BEGIN").unwrap();
    put_bytes(&mut c, "failed", &model(3, 6));
    assert!(c.batch_execute("SELECT 1 / 0").is_err());
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(rows(&mut c), rows_before);
    assert_eq!(chunk_table_bytes(&mut c), before);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM neurstore.models"),
        1,
        "only the committed model"
    );
    assert_eq!(get_bytes(&mut c, "kept"), model(1, 4));
    let verify = json(&mut c, "neurstore.verify()");
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}

#[test]
fn concurrent_puts_sharing_tensors_both_commit_and_store_them_once() {
    let Some(url) = database("ns_ext_concurrent") else {
        return;
    };
    // Six shared matrices and the bias, and two of each model's own.
    let shared = tensors(5, "shared", 6);
    let with_own = |seed: u64| {
        let mut t = shared.clone();
        t.extend(tensors(seed, "own", 2).into_iter().take(2));
        safetensors_file(&t, None)
    };
    let (a, b) = (with_own(6), with_own(7));
    let mut first = pg::client(&url);
    first.batch_execute("BEGIN").unwrap();
    put_bytes(&mut first, "a", &a);
    // The second session waits for the writer lock the first holds until it commits.
    let second = {
        let (url, b) = (url.clone(), b.clone());
        std::thread::spawn(move || {
            let mut c = pg::client(&url);
            c.batch_execute("BEGIN").unwrap();
            let report = put_bytes(&mut c, "b", &b);
            c.batch_execute("COMMIT").unwrap();
            report
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !second.is_finished(),
        "the second put waits for the first's commit"
    );
    // Readers take no lock and see committed models only.
    let (code, _) = failure(
        &mut pg::client(&url),
        "SELECT neurstore.get_bytes('a')",
        &[],
    );
    assert_eq!(code, "42704");
    first.batch_execute("COMMIT").unwrap();
    let report = second.join().unwrap();
    // The six shared matrices, the bias and the header (same names, shapes and offsets).
    assert_eq!(report["deduplicated_objects"], 8, "{report}");

    let mut c = pg::client(&url);
    assert_eq!(get_bytes(&mut c, "a"), a);
    assert_eq!(get_bytes(&mut c, "b"), b);
    let stats = json(&mut c, "neurstore.stats()");
    assert_eq!(stats["models"], 2, "{stats}");
    assert_eq!(stats["unique_tensors"], 6 + 1 + 2 + 2, "{stats}");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT content_key) - count(*) FROM neurstore_data.objects"
        ),
        0
    );
}

#[test]
fn models_read_back_byte_for_byte_through_sql_and_the_client() {
    let Some(url) = database("ns_ext_cross") else {
        return;
    };
    let mut c = pg::client(&url);
    let base = model(11, 5);
    let report = put_bytes(&mut c, "base", &base);
    assert_eq!(report["name"], "base");
    assert_eq!(report["dry_run"], false);
    assert_eq!(get_bytes(&mut c, "base"), base);

    // Put with the extension, read with the client; put with the client, read with SQL.
    let dir = tempfile::tempdir().unwrap();
    let client = Store::open(Path::new(&url)).unwrap();
    let out = dir.path().join("base.out.safetensors");
    client.get("base", &out, &NoProgress).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), base);
    drop(client);
    let other = model(12, 3);
    let input = dir.path().join("other.safetensors");
    std::fs::write(&input, &other).unwrap();
    let writer = Store::open_with(
        Path::new(&url),
        StoreOptions {
            write: true,
            wait: LockWait::Forever,
            ..Default::default()
        },
    )
    .unwrap();
    writer
        .put("other", &input, &PutOptions::default(), &NoProgress)
        .unwrap();
    let client_stats = serde_json::to_value(writer.stats().unwrap()).unwrap();
    drop(writer);
    assert_eq!(get_bytes(&mut c, "other"), other);

    // The same figures as the client's (and the CLI's `stats --json`).
    let stats = json(&mut c, "neurstore.stats()");
    for field in [
        "models",
        "tensors",
        "unique_tensors",
        "raw_bytes",
        "pack_bytes",
    ] {
        assert_eq!(stats[field], client_stats[field], "{field}: {stats}");
    }

    // Files on the server: put from a path, dry run, export.
    let shared = shared_dir();
    let tune = shared_file(shared.path(), "tune.safetensors", &model(11, 5));
    let dry = json(
        &mut c,
        &format!("neurstore.dry_run('{}', tolerance => 1e-3)", tune.display()),
    );
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry["fully_deduplicated"].as_bool().unwrap(), "{dry}");
    let path = shared_file(shared.path(), "third.safetensors", &model(13, 4));
    let put = json(
        &mut c,
        &format!("neurstore.put('third', '{}')", path.display()),
    );
    assert_eq!(put["tensors"], 5, "{put}");
    let exported = shared.path().join("exported.safetensors");
    json(
        &mut c,
        &format!("neurstore.export('third', '{}')", exported.display()),
    );
    assert_eq!(std::fs::read(&exported).unwrap(), model(13, 4));

    // rm and gc return the space; what is left verifies.
    let removed = json(&mut c, "neurstore.rm('other')");
    assert_eq!(removed["name"], "other");
    let gc = json(&mut c, "neurstore.gc()");
    assert!(
        gc["pack_bytes_after"].as_u64() < gc["pack_bytes_before"].as_u64(),
        "{gc}"
    );
    let verify = json(&mut c, "neurstore.verify()");
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    assert_eq!(verify["models"], 2);
    assert_eq!(get_bytes(&mut c, "base"), base);

    // The models are data, not part of the extension: dropping it keeps them.
    c.batch_execute("DROP EXTENSION neurstore").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM neurstore.models"), 2);
    c.batch_execute("CREATE EXTENSION neurstore").unwrap();
    assert_eq!(get_bytes(&mut c, "base"), base);
}

#[test]
fn bad_input_is_an_error_with_a_fitting_sqlstate_never_a_crash() {
    let Some(url) = database("ns_ext_errors") else {
        return;
    };
    let mut c = pg::client(&url);
    let good = model(21, 3);
    put_bytes(&mut c, "good", &good);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let put = "SELECT neurstore.put_bytes($1, $2)";

    let truncated = &good[..good.len() - 10];
    let (code, message) = failure(&mut c, put, &[&"truncated", &truncated]);
    assert_eq!(code, "22P03", "{message}");
    let mut hostile = u64::MAX.to_le_bytes().to_vec();
    hostile.extend_from_slice(b"{\"a\":{}}");
    let (code, message) = failure(&mut c, put, &[&"hostile", &hostile]);
    assert_eq!(code, "22P03", "{message}");
    let (code, message) = failure(
        &mut c,
        "SELECT neurstore.put_bytes('t0', $1, tolerance => 0)",
        &[&good],
    );
    assert_eq!(code, "22023", "{message}");
    assert!(message.starts_with("tolerance: "), "{message}");
    let (code, message) = failure(
        &mut c,
        "SELECT neurstore.put_bytes('tnan', $1, rel_tolerance => 'NaN')",
        &[&good],
    );
    assert_eq!(code, "22023", "{message}");
    let (code, message) = failure(
        &mut c,
        "SELECT neurstore.put_bytes('b', $1, base => 'no-such-model')",
        &[&good],
    );
    assert_eq!(code, "42704", "{message}");
    let (code, message) = failure(&mut c, "SELECT neurstore.get_bytes('no-such-model')", &[]);
    assert_eq!(code, "42704", "{message}");
    let (code, _) = failure(&mut c, "SELECT neurstore.rm('no-such-model')", &[]);
    assert_eq!(code, "42704");
    let (code, _) = failure(&mut c, "SELECT neurstore.put_bytes('good', $1)", &[&good]);
    assert_eq!(code, "42710");
    let (code, _) = failure(&mut c, "SELECT neurstore.get_bytes(NULL)", &[]);
    assert_eq!(code, "22004");

    // A writer needs READ COMMITTED, the default.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    let (code, message) = failure(&mut c, put, &[&"rr", &good]);
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(code, "25000", "{message}");

    // Rights: a role granted nothing may not read the store, nor read server files.
    c.batch_execute(
        "DROP ROLE IF EXISTS ns_ext_nobody; CREATE ROLE ns_ext_nobody; \
         GRANT USAGE ON SCHEMA neurstore TO ns_ext_nobody",
    )
    .unwrap();
    c.batch_execute("SET ROLE ns_ext_nobody").unwrap();
    let (code, message) = failure(&mut c, "SELECT neurstore.stats()", &[]);
    assert_eq!(code, "42501", "{message}");
    let (code, message) = failure(&mut c, "SELECT neurstore.put('x', '/etc/passwd')", &[]);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("pg_read_server_files"), "{message}");
    c.batch_execute("RESET ROLE").unwrap();

    // The same backend answers still: none of it crashed.
    let same: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    assert_eq!(same, pid);
    assert_eq!(get_bytes(&mut c, "good"), good);
    assert_eq!(count(&mut c, "SELECT count(*) FROM neurstore.models"), 1);
}

#[test]
fn bounded_puts_decode_within_the_tolerance_on_the_backend_thread() {
    let Some(url) = database("ns_ext_bounded") else {
        return;
    };
    let mut c = pg::client(&url);
    put_bytes(&mut c, "base", &model(31, 8));
    // A fine-tune of the base: every tensor a quantized delta, encoded and checked on rayon,
    // which the extension confines to the backend's thread.
    let mut tune = tensors(31, "layer", 8);
    let mut rng = Rng::new(99);
    for t in tune.iter_mut().take(8) {
        for v in t.3.chunks_exact_mut(4) {
            let x = f32::from_le_bytes(v.try_into().unwrap()) + rng.normal() as f32 * 1e-3;
            v.copy_from_slice(&x.to_le_bytes());
        }
    }
    let tune = safetensors_file(&tune, None);
    let report: String = c
        .query_one(
            "SELECT CAST(neurstore.put_bytes('tune', $1, tolerance => 1e-4) AS text)",
            &[&tune],
        )
        .unwrap()
        .get(0);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["max_error"].as_f64().unwrap() <= 1e-4, "{report}");
    assert!(report["delta_tensors"].as_u64().unwrap() > 0, "{report}");
    let back = get_bytes(&mut c, "tune");
    assert_eq!(back.len(), tune.len());
    let header = 8 + u64::from_le_bytes(tune[..8].try_into().unwrap()) as usize;
    assert_eq!(back[..header], tune[..header]);
    let worst = back[header..]
        .chunks_exact(4)
        .zip(tune[header..].chunks_exact(4))
        .map(|(a, b)| {
            (f32::from_le_bytes(a.try_into().unwrap()) - f32::from_le_bytes(b.try_into().unwrap()))
                .abs()
        })
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "{worst}");
}
