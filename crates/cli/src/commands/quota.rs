//! `tollgate quota show KEY`: the cluster-wide accounting of one rate-limit counter key, from the
//! answering control node's applied Raft state (`QuotaService.Show`).
//!
//! Per live window: the limit, the budget reserved by chunks (`outstanding`: admitted calls can
//! never exceed it), the consumption settled so far, what is stranded (chunks of ended leader
//! terms nobody attested: spent for the window, the declared under-admission), and what the
//! leader has leased out right now (0 when a follower answers).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use tollgate_proto::v1::quota_service_client::QuotaServiceClient;
use tollgate_proto::v1::{QuotaShowRequest, QuotaShowResponse, QuotaWindow};

use super::client::{AdminClient, AdminError, CallKind, ControlArgs, block_on};
use super::output::{Table, print_json};

/// `tollgate quota ...`
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a counter key's limit, admitted, outstanding, leased and stranded tokens per window.
    Show {
        /// The full counter key, e.g. `grant:<grant id>/run-rerun_rate`.
        key: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Run a `quota` subcommand.
pub fn run(command: QuotaCommand) -> ExitCode {
    match command {
        QuotaCommand::Show { key, control } => block_on(show(key, control)),
    }
}

fn window_name(window: i32) -> &'static str {
    match QuotaWindow::try_from(window) {
        Ok(QuotaWindow::Second) => "second",
        Ok(QuotaWindow::Minute) => "minute",
        Ok(QuotaWindow::Hour) => "hour",
        Ok(QuotaWindow::Day) => "day",
        _ => "unknown",
    }
}

fn show_json(key: &str, response: &QuotaShowResponse) -> serde_json::Value {
    json!({
        "key": key,
        "applied_index": response.applied_index,
        "windows": response.windows.iter().map(|w| json!({
            "window": window_name(w.window),
            "window_id": w.window_id,
            "max": w.max,
            "outstanding": w.outstanding,
            "consumed": w.consumed,
            "stranded": w.stranded,
            "leased": w.leased,
        })).collect::<Vec<_>>(),
    })
}

fn show_text(key: &str, response: &QuotaShowResponse) -> String {
    if response.windows.is_empty() {
        return format!("{key}: no live window (nothing reserved yet, or its windows ended)\n");
    }
    let mut table = Table::new(&[
        "WINDOW",
        "WINDOW ID",
        "LIMIT",
        "ADMITTED",
        "OUTSTANDING",
        "LEASED",
        "STRANDED",
    ]);
    for w in &response.windows {
        table.row(vec![
            window_name(w.window).to_owned(),
            w.window_id.to_string(),
            w.max.to_string(),
            w.consumed.to_string(),
            w.outstanding.to_string(),
            w.leased.to_string(),
            w.stranded.to_string(),
        ]);
    }
    format!("{key}\n{}", table.render())
}

async fn show(key: String, control: ControlArgs) -> Result<ExitCode, AdminError> {
    let client = AdminClient::new(&control)?;
    let request_key = key.clone();
    let response = client
        .call_with(CallKind::Read, QuotaServiceClient::new, |mut quota| {
            let key = request_key.clone();
            async move { quota.show(QuotaShowRequest { key }).await }
        })
        .await?;
    if control.json {
        print_json(&show_json(&key, &response));
    } else {
        print!("{}", show_text(&key, &response));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tollgate_proto::v1::QuotaWindowReport;

    fn response() -> QuotaShowResponse {
        QuotaShowResponse {
            windows: vec![QuotaWindowReport {
                window: QuotaWindow::Minute as i32,
                window_id: 29_000_000,
                max: 10,
                outstanding: 8,
                consumed: 6,
                stranded: 1,
                leased: 2,
            }],
            applied_index: 42,
        }
    }

    #[test]
    fn a_key_shows_one_row_per_live_window() {
        let text = show_text("grant:g_1/run-rerun_rate", &response());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "grant:g_1/run-rerun_rate");
        assert!(lines[1].starts_with("WINDOW"), "{text}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells, vec!["minute", "29000000", "10", "6", "8", "2", "1"]);
    }

    #[test]
    fn a_key_without_live_windows_says_so() {
        let empty = QuotaShowResponse::default();
        assert!(show_text("k", &empty).contains("no live window"));
        assert_eq!(show_json("k", &empty)["windows"], json!([]));
    }

    #[test]
    fn the_json_names_every_figure() {
        let value = show_json("k", &response());
        assert_eq!(value["windows"][0]["window"], "minute");
        assert_eq!(value["windows"][0]["consumed"], 6);
        assert_eq!(value["applied_index"], 42);
    }
}
