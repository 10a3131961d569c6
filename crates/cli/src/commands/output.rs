//! How admin commands print: aligned text tables for a terminal, or one JSON document per command
//! (`--json`) built from the response message with stable snake_case keys.
//!
//! The JSON mapping is written out field by field here rather than derived, so that renaming a
//! proto field cannot silently change what scripts read.

use std::collections::HashMap;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tollgate_proto::v1::{ClusterMember, GatewayStatus, Grant, NodeRole, Upstream, upstream};

/// A text table: a header row and rows, columns padded to their widest cell and separated by
/// two spaces; the last column is not padded.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are empty, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let text = cell(row, i);
                line.push_str(&text);
                if i + 1 < columns {
                    line.push_str(&" ".repeat(width - text.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Print one JSON document on stdout (pretty, as a command's whole output).
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // A `Value` always serializes; keep the output a JSON document regardless.
        Err(error) => println!("{}", json!({ "error": error.to_string() })),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC; `-` for 0 (unknown).
pub fn rfc3339_ms(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms}ms"))
}

/// `voter` / `learner` / `unspecified`.
pub fn role_name(role: i32) -> &'static str {
    match NodeRole::try_from(role) {
        Ok(NodeRole::Voter) => "voter",
        Ok(NodeRole::Learner) => "learner",
        _ => "unspecified",
    }
}

fn sorted_map(map: &HashMap<String, String>) -> Value {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Value::Object(
        keys.into_iter()
            .map(|k| (k.clone(), Value::String(map[k].clone())))
            .collect(),
    )
}

/// A grant as JSON; the token hash in lowercase hex.
pub fn grant_json(grant: &Grant) -> Value {
    json!({
        "id": grant.id,
        "label": grant.label,
        "token_sha256": hex::encode(&grant.token_sha256),
        "server": grant.server,
        "policy_id": grant.policy_id,
        "revoked": grant.revoked,
    })
}

/// An upstream as JSON, with its transport under `http` or `stdio`.
pub fn upstream_json(up: &Upstream) -> Value {
    let mut value = json!({ "name": up.name });
    match &up.transport {
        Some(upstream::Transport::Http(http)) => {
            value["http"] = json!({
                "url": http.url,
                "headers": sorted_map(&http.headers),
                "headers_from_env": sorted_map(&http.headers_from_env),
                "tls": http.tls.as_ref().map(|tls| json!({
                    "ca_file": tls.ca_file,
                    "client_cert_file": tls.client_cert_file,
                    "client_key_file": tls.client_key_file,
                })),
            });
        }
        Some(upstream::Transport::Stdio(stdio)) => {
            value["stdio"] = json!({
                "command": stdio.command,
                "args": stdio.args,
                "env": sorted_map(&stdio.env),
                "idle_timeout_secs": stdio.idle_timeout_secs,
            });
        }
        None => {}
    }
    value
}

/// A cluster member as JSON.
pub fn member_json(member: &ClusterMember) -> Value {
    json!({
        "node_id": member.node_id,
        "raft_addr": member.raft_addr,
        "api_addr": member.api_addr,
        "role": role_name(member.role),
        "matched_index": member.matched_index,
    })
}

/// A gateway's progress as JSON.
pub fn gateway_json(gateway: &GatewayStatus) -> Value {
    json!({
        "gateway_id": gateway.gateway_id,
        "revision": gateway.revision,
        "served_by_node_id": gateway.served_by_node_id,
        "last_seen_unix_ms": gateway.last_seen_unix_ms,
    })
}

/// The members table of `cluster status`, `cluster add` and `cluster remove`.
pub fn members_table(members: &[ClusterMember], leader_id: u64) -> Table {
    let mut table = Table::new(&["NODE", "ROLE", "RAFT", "API", "MATCHED"]);
    for member in members {
        let role = if member.node_id == leader_id && leader_id != 0 {
            format!("{} (leader)", role_name(member.role))
        } else {
            role_name(member.role).to_owned()
        };
        table.row(vec![
            member.node_id.to_string(),
            role,
            member.raft_addr.clone(),
            member.api_addr.clone(),
            member.matched_index.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up_on_the_widest_cell() {
        let mut table = Table::new(&["ID", "NAME"]);
        table.row(vec!["1".into(), "a".into()]);
        table.row(vec!["1234".into(), "b".into()]);
        assert_eq!(table.render(), "ID    NAME\n1     a\n1234  b\n");
    }

    #[test]
    fn times_are_rfc3339_utc_and_zero_is_a_dash() {
        assert_eq!(rfc3339_ms(0), "-");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn grant_json_has_the_hash_in_hex() {
        let value = grant_json(&Grant {
            id: "g_1".into(),
            label: "l".into(),
            token_sha256: vec![0xab; 32],
            server: "s".into(),
            policy_id: "p".into(),
            revoked: true,
        });
        assert_eq!(value["token_sha256"], "ab".repeat(32));
        assert_eq!(value["revoked"], true);
    }
}
