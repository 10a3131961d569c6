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

// ---------------------------------------------------------------------------------------------
// HTTPS upstreams: `tls_ca_file`, `tls_client_cert`, `tls_client_key`.

/// PEM files made at test time: a CA, a client certificate it issued and its key, a second,
/// unrelated key, and files that are not what their key expects.
struct TlsFiles {
    dir: tempfile::TempDir,
    client_key_pem: String,
}

impl TlsFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "config test ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["client.test".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.pem());
        write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());
        write("other.key", &other_key.serialize_pem());
        write("empty.pem", "just text, no PEM block\n");
        write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        Self {
            client_key_pem: client_key.serialize_pem(),
            dir,
        }
    }

    fn parse(&self, upstream_keys: &str) -> Result<Config, ConfigErrors> {
        let text = format!("[[upstreams]]\nname = \"up\"\n{upstream_keys}\n");
        Config::from_toml(&text, self.dir.path(), &env(&[]))
    }
}

fn tls_of(config: &Config) -> Option<&UpstreamTls> {
    match &config.upstreams[0].transport {
        Transport::Http { tls, .. } => tls.as_ref(),
        Transport::Stdio { .. } => panic!("not an HTTP upstream"),
    }
}

#[test]
fn an_https_url_is_accepted_and_trusts_the_platform_store_alone_by_default() {
    let config =
        parse("[[upstreams]]\nname = \"up\"\nurl = \"https://mcp.example.com/mcp\"\n").unwrap();
    match &config.upstreams[0].transport {
        Transport::Http { url, tls, .. } => {
            assert_eq!(url.scheme_str(), Some("https"));
            assert_eq!(tls, &None);
        }
        other => panic!("{other:?}"),
    }
    let errors = parse("[[upstreams]]\nname = \"up\"\nurl = \"ftp://host/mcp\"\n").unwrap_err();
    assert_eq!(paths(&errors), vec!["upstreams[0].url"]);
}

#[test]
fn a_ca_file_is_read_relative_to_the_config_file() {
    let files = TlsFiles::new();
    let config = files
        .parse("url = \"https://127.0.0.1:9/mcp\"\ntls_ca_file = \"ca.pem\"")
        .unwrap();
    let tls = tls_of(&config).unwrap();
    assert_eq!(tls.ca_file, Some(files.dir.path().join("ca.pem")));
    assert_eq!(tls.ca_certs.len(), 1);
    assert!(tls.client_identity.is_none());
}

#[test]
fn a_missing_or_invalid_ca_file_is_an_error_at_its_key() {
    let files = TlsFiles::new();
    for (file, expected) in [
        ("absent.pem", "cannot read"),
        ("empty.pem", "no PEM certificate"),
        ("garbage.pem", "not a usable CA certificate"),
    ] {
        let errors = files
            .parse(&format!(
                "url = \"https://127.0.0.1:9/mcp\"\ntls_ca_file = \"{file}\""
            ))
            .unwrap_err();
        assert_eq!(paths(&errors), vec!["upstreams[0].tls_ca_file"], "{file}");
        assert!(errors.0[0].message.contains(expected), "{file}: {errors}");
        assert!(errors.0[0].message.contains(file), "{file}: {errors}");
    }
}

#[test]
fn a_client_certificate_and_its_key_load_together() {
    let files = TlsFiles::new();
    let config = files
        .parse(
            "url = \"https://127.0.0.1:9/mcp\"\ntls_client_cert = \"client.pem\"\n\
             tls_client_key = \"client.key\"",
        )
        .unwrap();
    let identity = tls_of(&config).unwrap().client_identity.as_ref().unwrap();
    assert_eq!(identity.cert_file, files.dir.path().join("client.pem"));
    assert_eq!(identity.certified_key().cert.len(), 1);
    assert!(tls_of(&config).unwrap().ca_certs.is_empty());
}

#[test]
fn a_client_certificate_without_its_key_or_a_key_without_its_certificate_is_an_error() {
    let files = TlsFiles::new();
    let errors = files
        .parse("url = \"https://127.0.0.1:9/mcp\"\ntls_client_cert = \"client.pem\"")
        .unwrap_err();
    assert_eq!(paths(&errors), vec!["upstreams[0].tls_client_cert"]);
    assert!(errors.0[0].message.contains("tls_client_key"), "{errors}");
    let errors = files
        .parse("url = \"https://127.0.0.1:9/mcp\"\ntls_client_key = \"client.key\"")
        .unwrap_err();
    assert_eq!(paths(&errors), vec!["upstreams[0].tls_client_key"]);
    assert!(errors.0[0].message.contains("tls_client_cert"), "{errors}");
}

#[test]
fn a_bad_client_certificate_or_key_is_an_error_at_the_key_at_fault() {
    let files = TlsFiles::new();
    for (cert, key, at, expected) in [
        ("absent.pem", "client.key", "tls_client_cert", "cannot read"),
        (
            "empty.pem",
            "client.key",
            "tls_client_cert",
            "no PEM certificate",
        ),
        ("client.pem", "absent.key", "tls_client_key", "cannot read"),
        ("client.pem", "client.pem", "tls_client_key", "no PKCS#8"),
        (
            "client.pem",
            "other.key",
            "tls_client_key",
            "does not belong",
        ),
        (
            "garbage.pem",
            "client.key",
            "tls_client_cert",
            "invalid certificate",
        ),
    ] {
        let errors = files
            .parse(&format!(
                "url = \"https://127.0.0.1:9/mcp\"\ntls_client_cert = \"{cert}\"\n\
                 tls_client_key = \"{key}\""
            ))
            .unwrap_err();
        let path = format!("upstreams[0].{at}");
        assert_eq!(
            paths(&errors),
            vec![path.as_str()],
            "{cert} {key}: {errors}"
        );
        assert!(
            errors.0[0].message.contains(expected),
            "{cert} {key}: {errors}"
        );
    }
}

#[test]
fn tls_keys_on_a_stdio_upstream_or_an_http_url_are_errors_that_say_why() {
    let files = TlsFiles::new();
    let errors = files
        .parse(
            "command = \"server\"\ntls_ca_file = \"ca.pem\"\ntls_client_cert = \"client.pem\"\n\
             tls_client_key = \"client.key\"",
        )
        .unwrap_err();
    assert_eq!(
        paths(&errors),
        vec![
            "upstreams[0].tls_ca_file",
            "upstreams[0].tls_client_cert",
            "upstreams[0].tls_client_key"
        ]
    );
    assert!(errors.0[0].message.contains("https://"), "{errors}");
    let errors = files
        .parse("url = \"http://127.0.0.1:9/mcp\"\ntls_ca_file = \"ca.pem\"")
        .unwrap_err();
    assert_eq!(paths(&errors), vec!["upstreams[0].tls_ca_file"]);
    assert!(errors.0[0].message.contains("without TLS"), "{errors}");
}

#[test]
fn the_config_debug_output_never_shows_the_client_key() {
    let files = TlsFiles::new();
    let config = files
        .parse(
            "url = \"https://127.0.0.1:9/mcp\"\ntls_ca_file = \"ca.pem\"\n\
             tls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"",
        )
        .unwrap();
    let debug = format!("{config:?}");
    assert!(debug.contains("client.key"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    use rustls::pki_types::pem::PemObject as _;
    let key_der =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(files.client_key_pem.as_bytes()).unwrap();
    let secret = key_der.secret_der();
    for body_line in files
        .client_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!debug.contains(body_line), "the key's PEM leaked: {debug}");
    }
    // Neither as hex nor as a Rust byte list.
    assert!(!debug.contains(&hex::encode(&secret[secret.len() - 16..])));
    let tail: Vec<String> = secret[secret.len() - 8..]
        .iter()
        .map(u8::to_string)
        .collect();
    assert!(!debug.contains(&tail.join(", ")), "{debug}");
}

#[test]
fn equal_tls_files_make_equal_settings_and_a_changed_file_does_not() {
    let files = TlsFiles::new();
    let keys = "url = \"https://127.0.0.1:9/mcp\"\ntls_ca_file = \"ca.pem\"\n\
                tls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"";
    let first = files.parse(keys).unwrap();
    let second = files.parse(keys).unwrap();
    assert_eq!(first.upstreams, second.upstreams);
    std::fs::write(
        files.dir.path().join("ca.pem"),
        std::fs::read(files.dir.path().join("client.pem")).unwrap(),
    )
    .unwrap();
    let changed = files.parse(keys).unwrap();
    assert_ne!(first.upstreams, changed.upstreams);
}

#[test]
fn the_cluster_section_defaults_to_a_single_node_on_loopback() {
    let config = parse(MINIMAL).unwrap();
    let cluster = &config.cluster;
    assert_eq!(cluster.id, 1);
    assert_eq!(cluster.api_listen.to_string(), "127.0.0.1:7070");
    assert_eq!(cluster.raft_listen.to_string(), "127.0.0.1:7071");
    assert!(cluster.members.is_empty() && !cluster.join_later);
    assert!(cluster.control.is_empty());
    assert_eq!(cluster.admin_token, None);
}

#[test]
fn the_cluster_section_reads_members_and_the_environment_below_the_file() {
    let text = r#"
[cluster]
id = 2
api_listen = "127.0.0.1:0"
[[cluster.members]]
id = 1
raft = "tg-0:7071"
api = "tg-0:7070"
[[cluster.members]]
id = 2
raft = "tg-1:7071"
api = "tg-1:7070"
[[cluster.members]]
id = 3
raft = "tg-2:7071"
api = "tg-2:7070"
"#;
    let vars = env(&[
        ("TOLLGATE_ADMIN_TOKEN", "an-admin-token-long-enough"),
        ("TOLLGATE_API_ADDR", "127.0.0.1:9999"),
        ("TOLLGATE_RAFT_ADDR", "127.0.0.1:7171"),
        ("TOLLGATE_CONTROL", "a:1, b:2"),
        ("TOLLGATE_DATA_DIR", "/var/lib/tg"),
    ]);
    let config = Config::from_toml(text, Path::new("."), &vars).unwrap();
    let cluster = &config.cluster;
    assert_eq!(cluster.id, 2);
    assert_eq!(cluster.members.len(), 3);
    assert_eq!(cluster.members[1].api, "tg-1:7070");
    assert_eq!(
        cluster.api_listen.to_string(),
        "127.0.0.1:0",
        "the file wins"
    );
    assert_eq!(
        cluster.raft_listen.to_string(),
        "127.0.0.1:7171",
        "then the environment"
    );
    assert_eq!(cluster.control, vec!["a:1", "b:2"]);
    assert_eq!(cluster.data_dir.as_deref(), Some(Path::new("/var/lib/tg")));
    assert_eq!(
        cluster.admin_token.as_deref(),
        Some("an-admin-token-long-enough")
    );
    assert!(
        !format!("{config:?}").contains("an-admin-token"),
        "the token never prints"
    );
}

#[test]
fn a_bad_cluster_section_names_every_bad_key() {
    let text = r#"
[cluster]
id = 4
control = ["nope"]
raft_advertise = "no-port"
[[cluster.members]]
id = 1
raft = "a:1"
api = "a:2"
[[cluster.members]]
id = 1
raft = "b"
api = "b:2"
"#;
    let vars = env(&[("TOLLGATE_ADMIN_TOKEN", "short")]);
    let errors = Config::from_toml(text, Path::new("."), &vars).unwrap_err();
    let mut found = paths(&errors);
    found.sort_unstable();
    assert_eq!(
        found,
        vec![
            "cluster.admin_token_env",
            "cluster.control[0]",
            "cluster.members",
            "cluster.members",
            "cluster.members[1].id",
            "cluster.members[1].raft",
            "cluster.raft_advertise",
        ],
        "{errors}"
    );
}

#[test]
fn grant_policies_get_cluster_ids_from_their_file_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    for path in ["a/team policy.json", "b/team policy.json"] {
        std::fs::write(dir.path().join(path), r#"{"version":"1","default":"deny"}"#).unwrap();
    }
    let grant = |label: &str, hash: char, policy: &str| {
        format!(
            "[[grants]]\nlabel = \"{label}\"\ntoken_sha256 = \"{}\"\nserver = \"up\"\npolicy = \"{policy}\"\n",
            hash.to_string().repeat(64)
        )
    };
    let ok = format!(
        "{MINIMAL}{}{}{}",
        grant("one", 'a', "a/team policy.json"),
        grant("two", 'b', "a/team policy.json"),
        "[[grants]]\nlabel = \"three\"\ntoken_sha256 = \"".to_owned()
            + &"c".repeat(64)
            + "\"\nserver = \"up\"\npolicy_inline = '{\"version\":\"1\",\"default\":\"allow\"}'\n"
    );
    let config = Config::from_toml(&ok, dir.path(), &env(&[])).unwrap();
    let ids: Vec<&str> = config
        .grants
        .iter()
        .map(|g| g.policy.as_ref().unwrap().id.as_str())
        .collect();
    let inline_id = format!("grant-{}", grant_id(&[0xcc; 32]));
    assert_eq!(ids, vec!["team-policy", "team-policy", inline_id.as_str()]);
    assert_eq!(
        config.grants[2].policy.as_ref().unwrap().document,
        r#"{"version":"1","default":"allow"}"#,
        "the document is kept as written, to push to the cluster"
    );

    let clash = format!(
        "{MINIMAL}{}{}",
        grant("one", 'a', "a/team policy.json"),
        grant("two", 'b', "b/team policy.json")
    );
    let errors = Config::from_toml(&clash, dir.path(), &env(&[])).unwrap_err();
    assert_eq!(paths(&errors), vec!["grants[1].policy"], "{errors}");
}

#[test]
fn the_admin_token_comes_from_a_file_before_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "from-the-mounted-secret\n").unwrap();
    let vars = env(&[("TOLLGATE_ADMIN_TOKEN", "from-the-environment-variable")]);
    let text = "[cluster]\nadmin_token_file = \"admin-token\"\n";
    let config = Config::from_toml(text, dir.path(), &vars).unwrap();
    assert_eq!(
        config.cluster.admin_token.as_deref(),
        Some("from-the-mounted-secret"),
        "read relative to the configuration file, trailing newline trimmed"
    );
    let config = Config::from_toml("", dir.path(), &vars).unwrap();
    assert_eq!(
        config.cluster.admin_token.as_deref(),
        Some("from-the-environment-variable")
    );
    let missing = "[cluster]\nadmin_token_file = \"nope\"\n";
    let errors = Config::from_toml(missing, dir.path(), &vars).unwrap_err();
    assert_eq!(paths(&errors), vec!["cluster.admin_token_file"], "{errors}");
}
