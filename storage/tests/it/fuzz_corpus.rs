//! The cargo-fuzz corpora, replayed as ordinary tests so that CI on stable runs them.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            check(&std::fs::read(&path).unwrap());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "empty corpus in {}", dir.display());
}

/// Every saved input of the `log_recovery` target passes its check (no panic; a log that
/// opens is exactly its valid prefix and verifies).
#[test]
fn log_recovery_corpus() {
    replay("log_recovery", fsdb_storage::testing::check_log_recovery);
}

/// Every saved input of the `frame_decode` target passes its check.
#[test]
fn frame_decode_corpus() {
    replay("frame_decode", fsdb_storage::testing::check_frame_decode);
}

/// Not a test: writes seed inputs (real segments, whole and damaged) into the corpora.
/// Run with `cargo test --release -p fsdb-storage --test it write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    use fsdb_storage::Durability;
    use fsdb_storage::io::sim::SimVfs;

    use crate::common::{open_sim, script, segment_files, small_options};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (seed, batches) in [(1u64, 3usize), (2, 12), (3, 30)] {
        let vfs = SimVfs::new();
        let log = open_sim(&vfs, small_options(Durability::Sync)).unwrap();
        for batch in script(seed, batches) {
            log.append(&batch).unwrap();
        }
        drop(log);
        let files = segment_files(&vfs);
        let first = &files[0].1;
        let last = &files.last().unwrap().1;
        let write = |target: &str, name: String, bytes: &[u8]| {
            std::fs::create_dir_all(root.join(target)).unwrap();
            std::fs::write(root.join(target).join(name), bytes).unwrap();
        };
        // Mode 0: one file (the active segment); mode 1/3: two files, split by byte 2.
        write(
            "log_recovery",
            format!("seed{seed}-active"),
            &[&[0u8][..], last].concat(),
        );
        write(
            "log_recovery",
            format!("seed{seed}-torn"),
            &[&[0u8][..], &last[..last.len() * 2 / 3]].concat(),
        );
        let split = (first.len() * 255 / (first.len() + last.len())) as u8;
        write(
            "log_recovery",
            format!("seed{seed}-two"),
            &[&[1u8, split][..], first, last].concat(),
        );
        write(
            "log_recovery",
            format!("seed{seed}-repair"),
            &[&[3u8, split][..], first, last].concat(),
        );
        write("frame_decode", format!("seed{seed}-header"), &last[..32]);
        write("frame_decode", format!("seed{seed}-frame"), &last[32..]);
        write(
            "frame_decode",
            format!("seed{seed}-trailer"),
            &first[first.len() - 32..],
        );
    }
}
