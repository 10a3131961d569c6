#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, Path::new("."), &env(&[]))
}

fn paths(errors: &ConfigErrors) -> Vec<&str> {
    errors.0.iter().map(|e| e.path.as_str()).collect()
}

const MINIMAL: &str = r#"
[[upstreams]]
name = "up"
url = "http://127.0.0.1:9/mcp"
"#;

#[test]
fn the_commented_example_is_complete_and_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let env = env(&[
        ("TOLLGATE_SESSION_KEY", &"ab".repeat(32)),
        ("TOLLGATE_LAPTOP_TOKEN", "a-laptop-token-of-some-length"),
    ]);
    let config = Config::load(&dir.join("tollgate.toml"), &env).unwrap();
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(config.grants.len(), 2);
    assert!(config.grants.iter().all(|g| g.policy.is_some()));
    assert!(!config.sessions.ephemeral);
    assert_eq!(config.audit_path, Some(dir.join("tollgate-audit.jsonl")));
}

#[test]
fn an_unknown_key_is_reported_with_its_path() {
    let errors = parse(
        r#"
[[upstreams]]
name = "up"
urll = "http://127.0.0.1:9/mcp"
"#,
    )
    .unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert!(errors.0[0].path.starts_with("upstreams[0]"), "{errors}");
    assert!(errors.0[0].message.contains("urll"), "{errors}");

    let errors = parse("[listen]\ndata = \"127.0.0.1:1\"\nadmn = \"x\"\n").unwrap_err();
    assert!(errors.0[0].path.starts_with("listen"), "{errors}");
    assert!(errors.0[0].message.contains("admn"), "{errors}");
}

#[test]
fn a_wrongly_typed_value_is_reported_with_its_path() {
    let errors = parse("[limits]\nmax_body_bytes = \"big\"\n").unwrap_err();
    assert_eq!(paths(&errors), vec!["limits.max_body_bytes"], "{errors}");
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let errors = parse(
        r#"
[listen]
data = "not an address"

[[upstreams]]
name = "up"
url = "ftp://nowhere"

[[upstreams]]
name = "up"
command = "x"
headers = { "X-A" = "b" }

[[grants]]
label = "g"
token_sha256 = "zz"
server = "missing"
"#,
    )
    .unwrap_err();
    let paths = paths(&errors);
    for expected in [
        "listen.data",
        "upstreams[0].url",
        "upstreams[1].name",
        "upstreams[1].headers",
        "grants[0].server",
        "grants[0].token_sha256",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {errors}");
    }
}

#[test]
fn a_bad_policy_file_names_the_grant_and_every_json_pointer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"version":"1","default":"maybe","tools":{"x":{"limits":[{"counter":"c","window":"week","max":0,"scope":"grant"}]}}}"#,
    )
    .unwrap();
    let text = format!(
        "{MINIMAL}\n[[grants]]\nlabel = \"g\"\ntoken_sha256 = \"{}\"\nserver = \"up\"\npolicy = \"bad.json\"\n",
        "00".repeat(32)
    );
    let errors = Config::from_toml(&text, dir.path(), &env(&[])).unwrap_err();
    assert_eq!(paths(&errors), vec!["grants[0].policy"]);
    let message = &errors.0[0].message;
    for pointer in [
        "/default",
        "/tools/x/limits/0/window",
        "/tools/x/limits/0/max",
    ] {
        assert!(
            message.contains(pointer),
            "{pointer} missing from {message}"
        );
    }
}

#[test]
fn a_grant_without_a_policy_is_valid_and_has_none() {
    let text = format!(
        "{MINIMAL}\n[[grants]]\nlabel = \"g\"\ntoken_sha256 = \"{}\"\nserver = \"up\"\n",
        "00".repeat(32)
    );
    let config = parse(&text).unwrap();
    assert!(config.grants[0].policy.is_none());
    assert_eq!(config.grants[0].id, grant_id(&[0; 32]));
}

#[test]
fn a_token_from_the_environment_is_hashed_and_a_missing_variable_is_an_error() {
    let text = format!(
        "{MINIMAL}\n[[grants]]\nlabel = \"g\"\ntoken_env = \"MY_TOKEN\"\nserver = \"up\"\n"
    );
    let config = Config::from_toml(
        &text,
        Path::new("."),
        &env(&[("MY_TOKEN", "0123456789abcdef-token")]),
    )
    .unwrap();
    assert_eq!(
        config.grants[0].token_hash,
        token_hash("0123456789abcdef-token")
    );
    let errors = parse(&text).unwrap_err();
    assert_eq!(paths(&errors), vec!["grants[0].token_env"]);
}

#[test]
fn the_file_wins_over_the_environment_which_wins_over_the_default() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.listen.data, "127.0.0.1:8080".parse().unwrap());
    let from_env = Config::from_toml(
        MINIMAL,
        Path::new("."),
        &env(&[
            (ENV_DATA_ADDR, "127.0.0.1:7000"),
            (ENV_AUDIT_PATH, "/tmp/a.jsonl"),
        ]),
    )
    .unwrap();
    assert_eq!(from_env.listen.data, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(from_env.audit_path, Some(PathBuf::from("/tmp/a.jsonl")));
    let text = format!("[listen]\ndata = \"127.0.0.1:6000\"\n{MINIMAL}");
    let from_file = Config::from_toml(
        &text,
        Path::new("."),
        &env(&[(ENV_DATA_ADDR, "127.0.0.1:7000")]),
    )
    .unwrap();
    assert_eq!(from_file.listen.data, "127.0.0.1:6000".parse().unwrap());
}

#[test]
fn session_keys_accept_base64_and_hex_and_reject_short_keys() {
    let text = format!(
        "{MINIMAL}\n[[sessions.keys]]\nid = \"new\"\nsecret = \"{}\"\n[[sessions.keys]]\nid = \"old\"\nsecret = \"{}\"\n",
        "11".repeat(32),
        base64::engine::general_purpose::STANDARD.encode([2u8; 32]),
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.sessions.keys[0], ("new".to_owned(), [0x11; 32]));
    assert_eq!(config.sessions.keys[1], ("old".to_owned(), [2; 32]));
    let errors = parse(&format!(
        "{MINIMAL}\n[[sessions.keys]]\nid = \"k\"\nsecret = \"c2hvcnQ=\"\n"
    ))
    .unwrap_err();
    assert_eq!(paths(&errors), vec!["sessions.keys[0].secret"]);
    assert!(parse(MINIMAL).unwrap().sessions.ephemeral);
}

#[test]
fn injected_headers_may_not_override_protocol_headers() {
    let errors = parse(
        "[[upstreams]]\nname = \"up\"\nurl = \"http://127.0.0.1:9/mcp\"\nheaders = { \"Mcp-Session-Id\" = \"x\" }\n",
    )
    .unwrap_err();
    assert_eq!(paths(&errors), vec!["upstreams[0].headers.Mcp-Session-Id"]);
}

#[test]
fn loopback_listeners_get_dns_rebinding_protection_by_default() {
    let config = parse(MINIMAL).unwrap();
    assert!(
        config
            .listen
            .allowed_hosts
            .contains(&"localhost".to_owned())
    );
    assert!(!config.listen.allowed_origins.is_empty());
    let open = parse(&format!("[listen]\ndata = \"0.0.0.0:8080\"\n{MINIMAL}")).unwrap();
    assert!(open.listen.allowed_hosts.is_empty());
}
