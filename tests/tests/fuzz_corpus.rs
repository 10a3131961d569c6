//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same property checks
//! the cargo-fuzz targets run (`fuzz/checks.rs`), so every CI run keeps what fuzzing found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{} fails its property check",
            path.display()
        );
        count += 1;
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn the_jsonrpc_frame_corpus_keeps_its_properties() {
    replay("jsonrpc_frame", checks::jsonrpc_frame);
}

#[test]
fn the_policy_loader_corpus_keeps_its_properties() {
    replay("policy_loader", checks::policy_loader);
}

#[test]
fn the_sse_decoder_corpus_keeps_its_properties() {
    replay("sse_decoder", checks::sse_decoder);
}
