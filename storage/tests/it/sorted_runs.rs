//! Sorted runs: rows written to files of their own and ingested into the state store read
//! back like committed ones; where runs and the store share a key, the later one wins;
//! nothing of a run is left in the directory afterwards, or after a crash and reopen.

use fsdb_storage::state::{StateOptions, StateStore, Table};

fn run_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("run-"))
        .collect()
}

#[test]
fn ingested_runs_read_back_and_later_values_win() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let mut batch = store.batch();
    batch.put(Table::Events, b"b", b"committed");
    batch.put(Table::Events, b"z", b"untouched");
    store.commit(batch).unwrap();

    // Two runs whose keys interleave, one of them sharing a key with the store and one
    // sharing a key with the other.
    let mut first = store.sorted_run(Table::Events).unwrap();
    for key in [b"a", b"b", b"d"] {
        first.put(key, &[b"first ", &key[..]].concat()).unwrap();
    }
    let mut second = store.sorted_run(Table::Events).unwrap();
    for key in [b"c", b"d", b"e"] {
        second.put(key, &[b"second ", &key[..]].concat()).unwrap();
    }
    let runs = vec![
        first.finish().unwrap().unwrap(),
        second.finish().unwrap().unwrap(),
    ];
    store.ingest(Table::Events, runs).unwrap();
    let get = |key: &[u8]| {
        store
            .get(Table::Events, key)
            .unwrap()
            .map(String::from_utf8)
    };
    assert_eq!(get(b"a"), Some(Ok("first a".into())));
    assert_eq!(
        get(b"b"),
        Some(Ok("first b".into())),
        "a run overwrites the store"
    );
    assert_eq!(get(b"c"), Some(Ok("second c".into())));
    assert_eq!(get(b"d"), Some(Ok("second d".into())), "the later run wins");
    assert_eq!(get(b"e"), Some(Ok("second e".into())));
    assert_eq!(get(b"z"), Some(Ok("untouched".into())));
    assert_eq!(run_files(dir.path()), Vec::<String>::new());

    // Reopened: the rows are the store's now.
    drop(store);
    let store = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let keys: Vec<Vec<u8>> = store
        .scan_prefix(Table::Events, b"")
        .map(|item| item.unwrap().0.to_vec())
        .collect();
    assert_eq!(
        keys,
        [b"a", b"b", b"c", b"d", b"e", b"z"].map(|k| k.to_vec())
    );
}

#[test]
fn keys_out_of_order_are_refused_and_empty_runs_are_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let mut run = store.sorted_run(Table::Events).unwrap();
    run.put(b"b", b"1").unwrap();
    assert!(run.put(b"a", b"2").is_err(), "a smaller key");
    assert!(run.put(b"b", b"3").is_err(), "the same key");
    drop(run);

    let empty = store.sorted_run(Table::Events).unwrap();
    assert!(empty.finish().unwrap().is_none());
    store.ingest(Table::Events, Vec::new()).unwrap();

    // A finished run dropped without being ingested takes its file with it.
    let mut unused = store.sorted_run(Table::Events).unwrap();
    unused.put(b"k", b"v").unwrap();
    drop(unused.finish().unwrap());
    assert_eq!(run_files(dir.path()).len(), 1, "the refused run's file");
    drop(store);
    let _store = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    assert_eq!(run_files(dir.path()), Vec::<String>::new());
}

#[test]
fn a_run_left_by_a_crash_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let mut run = store.sorted_run(Table::Events).unwrap();
    run.put(b"k", b"v").unwrap();
    // Finished but never ingested (the process died in between).
    std::mem::forget(run.finish().unwrap());
    assert_eq!(run_files(dir.path()).len(), 1);
    drop(store);
    let store = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    assert_eq!(run_files(dir.path()), Vec::<String>::new());
    assert_eq!(store.get(Table::Events, b"k").unwrap(), None);
}
