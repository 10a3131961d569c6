//! The binary's contract: exit codes and messages of `serve` (bad configuration),
//! `policy validate`, `audit verify` and `token`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .expect("tollgate runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"))
}

#[test]
fn serve_refuses_an_unknown_key_with_its_path_and_exit_code_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[upstreams]]\nname = \"a\"\nurll = \"http://127.0.0.1:1/mcp\"\n",
    )
    .unwrap();
    let output = tollgate(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("upstreams[0]") && err.contains("urll"),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_grant_whose_policy_is_invalid_and_names_every_pointer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.json"),
        r#"{"version":"1","default":"allow","tools":{"x":{"deny_if":[{"conditions":[{"path":"args.a","op":"regex","value":"("}]}],"limitz":[]}}}"#,
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\n[[grants]]\nlabel = \"g\"\ntoken_sha256 = \"{}\"\nserver = \"a\"\npolicy = \"p.json\"\n",
            "00".repeat(32)
        ),
    )
    .unwrap();
    let output = tollgate(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let err = stderr(&output);
    for needle in [
        "grants[0].policy",
        "/tools/x/deny_if/0/conditions/0/value",
        "/tools/x/limitz",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
}

#[test]
fn policy_validate_summarises_a_valid_policy_and_lists_every_error_of_an_invalid_one() {
    let seed = examples().join("policies/seed.json");
    let output = tollgate(&["policy", "validate", seed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("valid policy v1") && out.contains("sha256:"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"version":"1","default":"perhaps","tools":{"run-rerun":{"limits":[{"counter":"c","window":"fortnight","max":0,"scope":"grant"}]}},"extra":1}"#,
    )
    .unwrap();
    let output = tollgate(&["policy", "validate", bad.to_str().unwrap()]);
    assert_ne!(output.status.code(), Some(0));
    let err = stderr(&output);
    for pointer in [
        "/default",
        "/tools/run-rerun/limits/0/window",
        "/tools/run-rerun/limits/0/max",
        "/extra",
    ] {
        assert!(err.contains(pointer), "{pointer} missing from {err}");
    }
}

#[test]
fn audit_verify_says_where_a_chain_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let log = tollgate_gateway::audit::AuditLog::open(&path)
            .await
            .unwrap();
        for i in 0..5 {
            log.record(tollgate_gateway::audit::AuditRecord::new(
                format!("r{i}"),
                "up",
                "tools/call",
                tollgate_gateway::audit::Decision::Allow,
            ));
        }
        log.flush().await.unwrap();
    });
    let output = tollgate(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("intact, 5 records"),
        "{}",
        stdout(&output)
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"r2\"", "\"rX\"", 1);
    std::fs::write(&path, edited).unwrap();
    let output = tollgate(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("line 3"), "{}", stdout(&output));
}

#[test]
fn token_new_prints_a_token_and_its_hash() {
    let output = tollgate(&["token", "new"]);
    assert_eq!(output.status.code(), Some(0));
    let out = stdout(&output);
    let token = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("token:")
        .trim()
        .to_owned();
    let hash = tollgate_gateway::config::token_hash(&token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert!(out.contains(&format!("token_sha256 = \"{hash}\"")), "{out}");
}
