//! Stores in PostgreSQL when the server itself is in play: killed with SIGKILL in the middle of
//! a put (the client's, and the extension's `neurstore.put_bytes`), and replicated to a
//! streaming standby that serves the model to a client and through `neurstore.get_bytes`. A
//! binary of its own, run apart from the other tests, because it stops the server they use; its
//! tests take turns.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::pg;
use common::{Rng, safetensors_file};
use neurstore::{LockWait, NoProgress, PutOptions, Store, StoreOptions};
use neurstore_core::dtype::DType;

/// The tests take turns: one of them kills the server.
static SERVER: Mutex<()> = Mutex::new(());

/// A model of `n` F32 matrices of `side` x `side` from `seed`.
fn model(seed: u64, n: usize, side: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let tensors: Vec<common::Tensor> = (0..n)
        .map(|i| {
            let data = (0..side * side)
                .flat_map(|_| (rng.normal() as f32 * 0.02).to_le_bytes())
                .collect();
            (format!("w{i}"), DType::F32, vec![side, side], data)
        })
        .collect();
    safetensors_file(&tensors, None)
}

fn writer(url: &str) -> Store {
    Store::open_with(
        Path::new(url),
        StoreOptions {
            write: true,
            wait: LockWait::For(Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .unwrap()
}

fn get_bytes(store: &Store, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.out"));
    let _ = std::fs::remove_file(&out);
    store.get(name, &out, &NoProgress).unwrap();
    std::fs::read(&out).unwrap()
}

/// Kills the server's postmaster and every backend with SIGKILL.
fn kill_server() {
    let pid_file = pg::server_dir().join("data/postmaster.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .unwrap();
    let mut pids = vec![pid];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    let status = std::process::Command::new("kill")
        .arg("-9")
        .args(&pids)
        .status()
        .unwrap();
    assert!(status.success());
    // SIGKILL is delivered, not awaited: wait until the processes are gone.
    let started = Instant::now();
    while Path::new(&format!("/proc/{}", pids[0])).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the killed server again (it replays its WAL) and checks it kept its URL.
fn restart_server(server: &str) {
    assert_eq!(
        pg::script(&["up", pg::server_dir().to_str().unwrap()]),
        server
    );
}

#[test]
fn a_server_killed_during_a_put_keeps_every_committed_model() {
    let Some(server) = pg::server() else { return };
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let url = pg::fresh_database(&server, "ns_killed");
    let dir = tempfile::tempdir().unwrap();
    Store::init(Path::new(&url)).unwrap();
    let committed = dir.path().join("committed.safetensors");
    std::fs::write(&committed, model(1, 8, 128)).unwrap();
    writer(&url)
        .put("committed", &committed, &PutOptions::default(), &NoProgress)
        .unwrap();

    // A put big enough to be under way when the server dies.
    let big = dir.path().join("big.safetensors");
    std::fs::write(&big, model(2, 24, 384)).unwrap();
    let pack_bytes = |url: &str| -> i64 {
        pg::client(url)
            .query_one(
                "SELECT CAST(coalesce(sum(len), 0) AS bigint) FROM neurstore_data.pack_files",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let committed_bytes = pack_bytes(&url);
    let put_url = url.clone();
    let put_path = big.clone();
    let put = std::thread::spawn(move || {
        writer(&put_url).put("big", &put_path, &PutOptions::default(), &NoProgress)
    });
    // Killed once the put has written pack bytes (or has finished).
    let started = Instant::now();
    while pack_bytes(&url) == committed_bytes && !put.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the put wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_server();
    let result = put.join().unwrap();
    eprintln!(
        "the put, as the server died: {:?}",
        result.as_ref().map(|r| r.name.clone())
    );
    restart_server(&server);
    // The server replays its WAL; then a writer's recovery cuts what the put left unpublished.
    let started = Instant::now();
    let store = loop {
        match Store::open_with(
            Path::new(&url),
            StoreOptions {
                write: true,
                ..Default::default()
            },
        ) {
            Ok(store) => break store,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("waiting for the server: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the store did not reopen: {e}"),
        }
    };
    assert_eq!(
        get_bytes(&store, "committed", dir.path()),
        std::fs::read(&committed).unwrap()
    );
    let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    match result {
        // Killed before its commit: no trace of it.
        Err(_) => assert_eq!(names, vec!["committed".to_string()]),
        // It committed before the kill: it is whole.
        Ok(_) => assert_eq!(
            get_bytes(&store, "big", dir.path()),
            std::fs::read(&big).unwrap()
        ),
    }
    let verify = store.verify(&NoProgress).unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    // The store takes writes again.
    store
        .put("after", &big, &PutOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(
        get_bytes(&store, "after", dir.path()),
        std::fs::read(&big).unwrap()
    );
}

/// The extension's `put_bytes` runs inside its caller's transaction, so nothing of it is
/// visible before it commits: the server is killed once the call has run for a while (or has
/// returned), and the store is checked through SQL after the restart.
#[test]
fn a_server_killed_during_the_extensions_put_keeps_every_committed_model() {
    let Some(server) = pg::server() else { return };
    if !pg::extension_available(&server) {
        return;
    }
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let url = pg::fresh_database(&server, "ns_killed_sql");
    let committed = model(4, 8, 128);
    let big = model(5, 24, 384);
    // Ok only once committed: the call's reply comes before the commit at the protocol's Sync,
    // whose confirmation the next statement waits for.
    let put = |c: &mut postgres::Client, name: &str, bytes: &[u8]| {
        c.query_one(
            "SELECT CAST(neurstore.put_bytes($1, $2) AS text)",
            &[&name, &bytes],
        )?;
        c.batch_execute("SELECT 1")
    };
    let mut c = pg::client(&url);
    c.batch_execute("CREATE EXTENSION neurstore").unwrap();
    put(&mut c, "committed", &committed).unwrap();
    drop(c);

    let (put_url, put_big) = (url.clone(), big.clone());
    let call = std::thread::spawn(move || put(&mut pg::client(&put_url), "big", &put_big));
    let running = |url: &str| -> bool {
        pg::client(url)
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE '%put_bytes%' \
                   AND state = 'active' AND pid <> pg_backend_pid() \
                   AND now() - query_start > interval '30 milliseconds'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let started = Instant::now();
    while !running(&url) && !call.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the call never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_server();
    let result = call.join().unwrap();
    eprintln!("put_bytes, as the server died: {result:?}");
    let replied = result.is_ok();
    restart_server(&server);

    let started = Instant::now();
    let mut c = loop {
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(c) => break c,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("waiting for the server: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the server did not come back: {e}"),
        }
    };
    let get = |c: &mut postgres::Client, name: &str| -> Vec<u8> {
        c.query_one("SELECT neurstore.get_bytes($1)", &[&name])
            .unwrap()
            .get(0)
    };
    assert!(get(&mut c, "committed") == committed);
    let names: Vec<String> = c
        .query("SELECT name FROM neurstore.models ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Killed before its commit, the call left no trace; committed (its reply may still have
    // been lost with the server), the model is whole.
    assert!(
        names == ["committed"] || names == ["big", "committed"],
        "{names:?}"
    );
    if names.len() == 2 {
        assert!(get(&mut c, "big") == big);
    } else {
        assert!(!replied, "put_bytes returned, yet its model is not there");
    }
    let verify: String = c
        .query_one("SELECT CAST(neurstore.verify() AS text)", &[])
        .unwrap()
        .get(0);
    let verify: serde_json::Value = serde_json::from_str(&verify).unwrap();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    // The store takes writes again.
    put(&mut c, "after", &big).unwrap();
    assert!(get(&mut c, "after") == big);
}

#[test]
fn a_streaming_standby_serves_models_put_on_the_primary() {
    let Some(server) = pg::server() else { return };
    let _turn = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let url = pg::fresh_database(&server, "ns_replicated");
    let dir = tempfile::tempdir().unwrap();
    let standby_dir = pg::server_dir().with_extension("standby-test");
    if standby_dir.exists() {
        let _ = pg::script(&["down", standby_dir.to_str().unwrap()]);
        std::fs::remove_dir_all(&standby_dir).unwrap();
    }
    let standby = pg::script(&["standby", &server, standby_dir.to_str().unwrap()]);
    let standby_url = pg::with_database(&standby, "ns_replicated");

    Store::init(Path::new(&url)).unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, model(3, 6, 128)).unwrap();
    writer(&url)
        .put("m", &path, &PutOptions::default(), &NoProgress)
        .unwrap();

    // The standby replays the put; a reader there sees the model once it has.
    let started = Instant::now();
    let bytes = loop {
        let seen = Store::open(Path::new(&standby_url))
            .ok()
            .filter(|s| s.list().map(|l| !l.is_empty()).unwrap_or(false));
        if let Some(store) = seen {
            break get_bytes(&store, "m", dir.path());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the standby never showed the model"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    let verify = Store::open(Path::new(&standby_url))
        .unwrap()
        .verify(&NoProgress)
        .unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);

    // The extension, created on the primary, reaches the standby by replication too; its
    // `get_bytes` runs there (read only) and returns the same file.
    if pg::extension_available(&server) {
        pg::client(&url)
            .batch_execute("CREATE EXTENSION neurstore")
            .unwrap();
        let started = Instant::now();
        let from_sql: Vec<u8> = loop {
            let got = pg::client(&standby_url).query_one("SELECT neurstore.get_bytes('m')", &[]);
            match got {
                Ok(row) => break row.get(0),
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    eprintln!("waiting for the standby to replay CREATE EXTENSION: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("neurstore.get_bytes failed on the standby: {e}"),
            }
        };
        assert!(
            from_sql == std::fs::read(&path).unwrap(),
            "get_bytes on the standby differs from the file put on the primary"
        );
    }
    let _ = pg::script(&["down", standby_dir.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&standby_dir);
}
