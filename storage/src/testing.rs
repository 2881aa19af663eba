//! Checks shared by the fuzz targets (`fuzz/`) and the tests that replay their corpora.
//! Each takes arbitrary bytes and panics if the storage layer misbehaves on them.

use std::path::Path;
use std::sync::Arc;

use crate::io::sim::SimVfs;
use crate::io::{OpenMode, Vfs};
use crate::log::format::{self, HEADER_BYTES};
use crate::{Durability, Log, LogOptions};

/// Decoding arbitrary bytes as a frame, header or trailer never panics, and whatever
/// decodes re-encodes to the same bytes.
pub fn check_frame_decode(input: &[u8]) {
    if let Ok((header, payload)) = format::decode_frame(input, 4096) {
        let mut again = Vec::new();
        format::encode_frame(&mut again, header, payload);
        assert_eq!(again, input[..again.len()], "frame re-encodes differently");
    }
    if let Ok(header) = format::decode_header(input) {
        assert_eq!(format::encode_header(header)[..], input[..HEADER_BYTES]);
    }
    if let Ok(trailer) = format::decode_trailer(input) {
        assert_eq!(
            format::encode_trailer(trailer)[..],
            input[..format::TRAILER_BYTES]
        );
    }
}

/// Open arbitrary bytes as a log. The first input byte chooses the layout: one segment
/// file, or two (split where the second byte says), and whether `repair` is on. Opening
/// may fail, but never panics or allocates without bound; a log that opens and reads
/// cleanly verifies, and its active segment is exactly a header plus valid frames (every
/// byte of the recovered tail re-encodes identically).
pub fn check_log_recovery(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let dir = Path::new("/fuzz/log");
    let vfs = SimVfs::new();
    vfs.create_dir_all(dir).expect("sim mkdir");
    let mut files = Vec::new();
    if mode & 1 == 0 || rest.is_empty() {
        files.push((1, rest.to_vec()));
    } else {
        let split = rest[0] as usize * (rest.len() - 1) / 255 + 1;
        let second_base = 1 + u64::from(mode >> 2);
        files.push((1, rest[1..split].to_vec()));
        files.push((second_base.max(2), rest[split..].to_vec()));
    }
    for (base, bytes) in files {
        let path = dir.join(format::segment_file_name(base));
        vfs.open_file(&path, OpenMode::CreateNew)
            .expect("sim create");
        vfs.write_file(&path, bytes).expect("sim write");
    }
    let options = LogOptions {
        durability: Durability::NoSync,
        segment_bytes_max: 4096,
        record_bytes_max: 4096,
        repair: mode & 2 != 0,
        ..LogOptions::default()
    };
    let Ok(log) = Log::open_with(Arc::new(vfs.clone()), dir, options) else {
        return;
    };
    let Ok(records) = log
        .scan(log.first_lsn())
        .and_then(|s| s.collect::<Result<Vec<_>, _>>())
    else {
        // Damage in a sealed segment is reported by reads, not at open.
        return;
    };
    log.verify().expect("a log that reads cleanly verifies");
    // The active segment is the one with the highest base; recovery leaves it holding
    // exactly its header and the frames of its records.
    let active_base = vfs
        .list_dir(dir)
        .expect("sim list")
        .iter()
        .filter_map(|name| format::parse_segment_file_name(name))
        .max()
        .expect("an open log has an active segment");
    let bytes = vfs
        .read_file(&dir.join(format::segment_file_name(active_base)))
        .expect("sim read");
    let mut again = format::encode_header(format::SegmentHeader {
        base_lsn: active_base,
    })
    .to_vec();
    for record in records.iter().filter(|r| r.position.segment == active_base) {
        let (header, payload) =
            format::decode_frame(&bytes[record.position.offset as usize..], 4096)
                .expect("recovered frame decodes");
        assert_eq!(payload, record.payload);
        format::encode_frame(&mut again, header, payload);
    }
    assert!(
        bytes == again,
        "the recovered active segment is not exactly its valid frames"
    );
    let end = log.end_lsn();
    let appended = log
        .append(&[b"after".as_slice()])
        .expect("a recovered log accepts appends");
    assert_eq!(appended.first_lsn, end);
}
