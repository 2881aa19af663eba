//! Time opening an existing database (FSDB_DIR), as a restart does: the log's recovery,
//! the state's header, no replay when the state is current.
use std::time::Instant;

fsdb::use_jemalloc!();

fn main() {
    let dir = std::env::var("FSDB_DIR").expect("FSDB_DIR names a data directory");
    let start = Instant::now();
    let db = fsdb::Db::open(&dir, fsdb::Options::default()).unwrap();
    let took = start.elapsed();
    println!(
        "open: {:.1} ms, {} records replayed, log end {}",
        took.as_secs_f64() * 1e3,
        db.open_report().replayed,
        db.log_end_lsn()
    );
}
