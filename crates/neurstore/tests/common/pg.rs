//! A real PostgreSQL for the tests of stores in a database: the server `scripts/postgres.sh up`
//! started, named by `NEURSTORE_TEST_POSTGRES` (its URL) and `NEURSTORE_TEST_POSTGRES_DIR` (its
//! directory, for tests that stop or copy it). Each test gets a database of its own.
//!
//! Without the variables the tests skip, saying so, except under CI (`CI` set), where a
//! missing server is a failure: CI must not pass by skipping them.

use std::path::PathBuf;
use std::process::Command;

/// The server's URL, or `None` (the test should return) outside CI.
pub fn server() -> Option<String> {
    match std::env::var("NEURSTORE_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI runs the PostgreSQL tests: set NEURSTORE_TEST_POSTGRES (scripts/postgres.sh up DIR prints it)"
            )
        }
        _ => {
            eprintln!("skipped: NEURSTORE_TEST_POSTGRES is not set (scripts/postgres.sh up DIR)");
            None
        }
    }
}

/// True when the `neurstore` extension is installed into the server at `server`. Where it is
/// not, tests of it skip, saying so, unless `NEURSTORE_TEST_EXTENSION` is set (CI sets it),
/// where that is a failure.
pub fn extension_available(server: &str) -> bool {
    let available = client(server)
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'neurstore'",
            &[],
        )
        .unwrap()
        .is_some();
    if !available {
        if std::env::var_os("NEURSTORE_TEST_EXTENSION").is_some() {
            panic!("the neurstore extension is not installed: scripts/postgres.sh extension");
        }
        eprintln!(
            "skipped: the neurstore extension is not installed (scripts/postgres.sh extension)"
        );
    }
    available
}

/// The cluster directory `scripts/postgres.sh up` was given.
pub fn server_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("NEURSTORE_TEST_POSTGRES_DIR")
            .expect("NEURSTORE_TEST_POSTGRES_DIR names the cluster's directory"),
    )
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

/// A fresh, empty database named `db` on the server at `url` (dropped first if it exists);
/// returns its URL.
pub fn fresh_database(url: &str, db: &str) -> String {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    with_database(url, db)
}

/// A client connection.
pub fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}

/// The repository's `scripts/postgres.sh` with `args`; returns its last line of output.
pub fn script(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("run postgres.sh");
    assert!(
        out.status.success(),
        "postgres.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// A PostgreSQL client program (pg_dump, pg_restore, ...) of the server's installation.
pub fn program(name: &str) -> Command {
    let bin = std::env::var("PG_BIN").ok().map(PathBuf::from).or_else(|| {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        dirs.sort();
        dirs.pop()
    });
    Command::new(bin.map_or_else(|| PathBuf::from(name), |b| b.join(name)))
}
