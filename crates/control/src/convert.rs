//! Mapping between the raft crate's replicated state and the `tollgate.v1` messages.
//!
//! # Upstream spec JSON
//!
//! The state machine stores an upstream as opaque JSON; this crate writes it with the keys of an
//! upstream in the gateway's config file (without `name`, which is the map key), so a gateway can
//! read either source with the same code:
//!
//! ```text
//! http:  {"url": "...", "headers": {..}, "headers_from_env": {..},
//!         "tls_ca_file": "...", "tls_client_cert": "...", "tls_client_key": "..."}
//! stdio: {"command": "...", "args": [..], "env": {..}, "idle_timeout_secs": N}
//! ```
//!
//! Empty maps, empty strings and a zero idle timeout are left out.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tollgate_proto::v1::{
    self, ConfigChange, ConfigSnapshot, HttpTransport, StdioTransport, TlsOptions, config_change,
    upstream,
};
use tollgate_raft::{Change, ConfigState, Grant, PolicyVersion};

/// Why a proto upstream cannot be stored.
pub fn upstream_problem(up: &v1::Upstream) -> Option<&'static str> {
    if up.name.is_empty() {
        return Some("the upstream name must not be empty");
    }
    match &up.transport {
        None => Some("the upstream needs a transport (http or stdio)"),
        Some(upstream::Transport::Http(http)) if http.url.is_empty() => {
            Some("an http upstream needs a url")
        }
        Some(upstream::Transport::Http(http))
            if !(http.url.starts_with("http://") || http.url.starts_with("https://")) =>
        {
            Some("an http upstream url must start with http:// or https://")
        }
        Some(upstream::Transport::Stdio(stdio)) if stdio.command.is_empty() => {
            Some("a stdio upstream needs a command")
        }
        Some(_) => None,
    }
}

fn string_map(map: &HashMap<String, String>) -> Value {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Value::Object(
        keys.into_iter()
            .map(|k| (k.clone(), Value::String(map[k].clone())))
            .collect(),
    )
}

fn put_str(obj: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        obj.insert(key.to_owned(), Value::String(value.to_owned()));
    }
}

fn put_map(obj: &mut Map<String, Value>, key: &str, map: &HashMap<String, String>) {
    if !map.is_empty() {
        obj.insert(key.to_owned(), string_map(map));
    }
}

/// The spec JSON of a proto transport (see the module docs).
pub fn upstream_spec(transport: &upstream::Transport) -> Value {
    let mut obj = Map::new();
    match transport {
        upstream::Transport::Http(http) => {
            put_str(&mut obj, "url", &http.url);
            put_map(&mut obj, "headers", &http.headers);
            put_map(&mut obj, "headers_from_env", &http.headers_from_env);
            if let Some(tls) = &http.tls {
                put_str(&mut obj, "tls_ca_file", &tls.ca_file);
                put_str(&mut obj, "tls_client_cert", &tls.client_cert_file);
                put_str(&mut obj, "tls_client_key", &tls.client_key_file);
            }
        }
        upstream::Transport::Stdio(stdio) => {
            put_str(&mut obj, "command", &stdio.command);
            if !stdio.args.is_empty() {
                obj.insert(
                    "args".to_owned(),
                    Value::Array(stdio.args.iter().cloned().map(Value::String).collect()),
                );
            }
            put_map(&mut obj, "env", &stdio.env);
            if stdio.idle_timeout_secs != 0 {
                obj.insert(
                    "idle_timeout_secs".to_owned(),
                    Value::from(stdio.idle_timeout_secs),
                );
            }
        }
    }
    Value::Object(obj)
}

fn get_str(spec: &Value, key: &str) -> String {
    spec.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn get_map(spec: &Value, key: &str) -> HashMap<String, String> {
    spec.get(key)
        .and_then(Value::as_object)
        .map(|obj| {
            obj.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The proto upstream of a stored spec. A spec with neither `url` nor `command` (not written by
/// this crate) has no transport, which a gateway treats as unusable.
pub fn upstream_from_spec(name: &str, spec: &Value) -> v1::Upstream {
    let transport = if spec.get("url").is_some() {
        let tls = TlsOptions {
            ca_file: get_str(spec, "tls_ca_file"),
            client_cert_file: get_str(spec, "tls_client_cert"),
            client_key_file: get_str(spec, "tls_client_key"),
        };
        let tls = (tls != TlsOptions::default()).then_some(tls);
        Some(upstream::Transport::Http(HttpTransport {
            url: get_str(spec, "url"),
            headers: get_map(spec, "headers"),
            headers_from_env: get_map(spec, "headers_from_env"),
            tls,
        }))
    } else if spec.get("command").is_some() {
        Some(upstream::Transport::Stdio(StdioTransport {
            command: get_str(spec, "command"),
            args: spec
                .get("args")
                .and_then(Value::as_array)
                .map(|args| {
                    args.iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            env: get_map(spec, "env"),
            idle_timeout_secs: spec
                .get("idle_timeout_secs")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        }))
    } else {
        None
    };
    v1::Upstream {
        name: name.to_owned(),
        transport,
    }
}

/// The `tollgate-policy` digest of a stored document; empty if it no longer validates (it was
/// validated before it was proposed, so only a different policy-crate version can cause that).
pub fn policy_digest(document: &str) -> String {
    tollgate_policy::Policy::from_json(document.as_bytes())
        .map(|policy| policy.digest().to_owned())
        .unwrap_or_default()
}

/// The proto message of one policy version.
pub fn policy(id: &str, version: &PolicyVersion) -> v1::Policy {
    v1::Policy {
        id: id.to_owned(),
        version: version.version,
        document_json: version.document.clone(),
        digest: policy_digest(&version.document),
    }
}

/// The proto message of a grant (its token hash, never a token).
pub fn grant(grant: &Grant) -> v1::Grant {
    v1::Grant {
        id: grant.id.clone(),
        label: grant.label.clone(),
        token_sha256: grant.token_sha256.0.to_vec(),
        server: grant.server.clone(),
        policy_id: grant.policy_id.clone(),
        revoked: grant.revoked,
    }
}

/// The whole configuration of `state`: each policy's serving version, every grant, every upstream.
pub fn snapshot(state: &ConfigState) -> ConfigSnapshot {
    ConfigSnapshot {
        policies: state
            .policy_ids()
            .filter_map(|id| state.current_policy(id).map(|v| policy(id, v)))
            .collect(),
        grants: state.grants().map(grant).collect(),
        upstreams: state
            .upstreams()
            .iter()
            .map(|(name, spec)| upstream_from_spec(name, spec))
            .collect(),
    }
}

/// The proto change of one applied change, read against `state` (which holds the revoked grant
/// a `GrantRevoked` must carry in full). `None` if the state no longer has what the change names.
pub fn change(state: &ConfigState, change: &Change) -> Option<ConfigChange> {
    let kind = match change {
        Change::PolicyVersion { id, version } => {
            config_change::Kind::PolicyPut(policy(id, version))
        }
        Change::GrantCreated { grant: created } => {
            // Send the grant as it is now: if it was revoked later, the later change says so too.
            let current = state.grant(&created.id).unwrap_or(created);
            config_change::Kind::GrantPut(grant(current))
        }
        Change::GrantRevoked { id } => {
            let mut revoked = grant(state.grant(id)?);
            revoked.revoked = true;
            config_change::Kind::GrantPut(revoked)
        }
        Change::UpstreamPut { name, spec } => {
            config_change::Kind::UpstreamPut(upstream_from_spec(name, spec))
        }
        Change::UpstreamRemoved { name } => {
            config_change::Kind::UpstreamRemoved(v1::UpstreamRemoved { name: name.clone() })
        }
    };
    Some(ConfigChange { kind: Some(kind) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn http_and_stdio_transports_survive_the_spec_round_trip() {
        let http = upstream::Transport::Http(HttpTransport {
            url: "https://files.internal/mcp".into(),
            headers: HashMap::from([("x-api-key".into(), "k".into())]),
            headers_from_env: HashMap::from([("authorization".into(), "FILES_TOKEN".into())]),
            tls: Some(TlsOptions {
                ca_file: "/etc/ca.pem".into(),
                client_cert_file: String::new(),
                client_key_file: String::new(),
            }),
        });
        let stdio = upstream::Transport::Stdio(StdioTransport {
            command: "mcp-server-time".into(),
            args: vec!["--tz".into(), "UTC".into()],
            env: HashMap::from([("LANG".into(), "C".into())]),
            idle_timeout_secs: 300,
        });
        for transport in [http, stdio] {
            let spec = upstream_spec(&transport);
            let back = upstream_from_spec("u", &spec);
            assert_eq!(back.transport, Some(transport));
        }
    }

    #[test]
    fn http_spec_uses_the_gateway_config_keys() {
        let spec = upstream_spec(&upstream::Transport::Http(HttpTransport {
            url: "http://127.0.0.1:9/mcp".into(),
            tls: Some(TlsOptions {
                ca_file: String::new(),
                client_cert_file: "/c.pem".into(),
                client_key_file: "/k.pem".into(),
            }),
            ..HttpTransport::default()
        }));
        assert_eq!(
            spec,
            serde_json::json!({
                "url": "http://127.0.0.1:9/mcp",
                "tls_client_cert": "/c.pem",
                "tls_client_key": "/k.pem",
            })
        );
    }

    #[test]
    fn an_upstream_without_transport_or_url_is_a_problem() {
        let mut up = v1::Upstream {
            name: "files".into(),
            transport: None,
        };
        assert!(upstream_problem(&up).is_some());
        up.transport = Some(upstream::Transport::Http(HttpTransport::default()));
        assert!(upstream_problem(&up).is_some());
        up.transport = Some(upstream::Transport::Stdio(StdioTransport {
            command: "x".into(),
            ..StdioTransport::default()
        }));
        assert!(upstream_problem(&up).is_none());
        up.name.clear();
        assert!(upstream_problem(&up).is_some());
    }
}
