//! One process per log directory: a second opener, in this process or another, is refused
//! with `Locked`, and the lock is released on close.

use std::process::Command;

use fsdb_storage::io::LOCK_WAIT;
use fsdb_storage::log::LOCK_FILE;
use fsdb_storage::{Log, LogError, LogOptions};

const CHILD_ENV: &str = "FSDB_STORAGE_LOCK_CHILD_DIR";

#[test]
fn second_opener_in_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    log.close().unwrap();
    Log::open(dir.path(), LogOptions::default()).unwrap();
}

#[test]
fn second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let run_child = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lock::child_tries_to_open",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .output()
            .unwrap()
    };
    let output = run_child();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("child: locked"), "child output: {stdout}");
    log.close().unwrap();
    let stdout = String::from_utf8_lossy(&run_child().stdout).into_owned();
    assert!(
        stdout.contains("child: opened"),
        "after close the child opens: {stdout}"
    );
}

/// Not a test of its own: the child process of `second_process_is_refused`.
#[test]
#[ignore = "run by second_process_is_refused in a child process"]
fn child_tries_to_open() {
    let dir = std::env::var(CHILD_ENV).expect("run by second_process_is_refused");
    match Log::open(std::path::Path::new(&dir), LogOptions::default()) {
        Ok(_) => println!("child: opened"),
        Err(LogError::Locked { .. }) => println!("child: locked"),
        Err(e) => println!("child: error {e}"),
    }
}

/// A lock let go within `LOCK_WAIT` is taken rather than refused: a child process can hold
/// a closed log's lock for a moment (it shares its parent's open files until it `exec`s).
#[test]
fn a_lock_let_go_within_the_wait_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::fs::File::create(dir.path().join(LOCK_FILE)).unwrap();
    holder.lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(LOCK_WAIT / 8);
        drop(holder);
    });
    let log = Log::open(dir.path(), LogOptions::default());
    release.join().unwrap();
    log.expect("the lock, let go within the wait, is taken");
}

/// A lock held for longer is refused once the wait is over.
#[test]
fn a_lock_held_past_the_wait_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::fs::File::create(dir.path().join(LOCK_FILE)).unwrap();
    holder.lock().unwrap();
    let started = std::time::Instant::now();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    assert!(
        started.elapsed() >= LOCK_WAIT,
        "refused only after the wait"
    );
}
