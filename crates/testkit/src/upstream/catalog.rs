//! The fixed content of the test upstream: tools, resources, resource templates and prompts.
//!
//! Names and payloads follow what the official conformance suite's server scenarios call
//! (`test_*` tools, `test://` resources, `test_*` prompts), plus the tools Tollgate's own tests
//! need (`run-rerun`, `echo`, `fail`, `slow`). The first tool listed is `test_simple_text`: the
//! suite's header-validation scenario calls `tools[0]` with no arguments and expects success.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// A 1x1 red PNG.
pub const PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// A tiny valid WAV file (8 kHz, mono, 8-bit, 16 samples of a square wave), base64-encoded.
pub fn wav_base64() -> String {
    let samples: Vec<u8> = (0..16)
        .map(|i| if i % 4 < 2 { 0xc0 } else { 0x40 })
        .collect();
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes()); // sample rate
    wav.extend_from_slice(&8000u32.to_le_bytes()); // byte rate
    wav.extend_from_slice(&1u16.to_le_bytes()); // block align
    wav.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    STANDARD.encode(wav)
}

fn no_args() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn tool(name: &str, description: &str, input_schema: Value) -> Value {
    json!({ "name": name, "description": description, "inputSchema": input_schema })
}

/// The JSON Schema 2020-12 input schema the `json-schema-2020-12` scenario looks for.
pub fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
            }
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" }
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false
    })
}

/// Every built-in tool definition, in the (deterministic) order `tools/list` returns them.
pub fn builtin_tools() -> Vec<Value> {
    vec![
        tool(
            "test_simple_text",
            "Returns a simple text response",
            no_args(),
        ),
        tool(
            "test_image_content",
            "Returns an image (1x1 PNG)",
            no_args(),
        ),
        tool(
            "test_audio_content",
            "Returns audio (a tiny WAV)",
            no_args(),
        ),
        tool(
            "test_embedded_resource",
            "Returns an embedded text resource",
            no_args(),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, image and resource content",
            no_args(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends three info log notifications while running",
            no_args(),
        ),
        tool(
            "test_logging_tool",
            "Sends log notifications only when the request opts in to a log level",
            no_args(),
        ),
        tool(
            "test_tool_with_progress",
            "Reports progress 0, 50, 100 of 100 when given a progress token",
            no_args(),
        ),
        tool(
            "test_error_handling",
            "Always fails with an isError result",
            no_args(),
        ),
        tool(
            "test_sampling",
            "Asks the client to sample an LLM with the given prompt",
            json!({ "type": "object", "properties": { "prompt": { "type": "string" } }, "required": ["prompt"] }),
        ),
        tool(
            "test_elicitation",
            "Asks the user for a username and an email",
            json!({ "type": "object", "properties": { "message": { "type": "string" } }, "required": ["message"] }),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicits with defaults for every primitive type",
            no_args(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicits with the five enum schema variants",
            no_args(),
        ),
        tool(
            "test_streaming_elicitation",
            "Needs an elicitation before it can answer",
            no_args(),
        ),
        tool(
            "test_reconnection",
            "Closes its SSE stream mid-call; the result arrives after reconnection",
            no_args(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            json_schema_2020_12(),
        ),
        tool(
            "test_missing_capability",
            "Requires the client's sampling capability",
            no_args(),
        ),
        tool(
            "test_trigger_tool_change",
            "Announces a change of the tool list to subscribers",
            no_args(),
        ),
        tool(
            "test_trigger_prompt_change",
            "Announces a change of the prompt list to subscribers",
            no_args(),
        ),
        tool(
            "test_trigger_resource_change",
            "Announces a change of the resource list and of test://watched-resource",
            no_args(),
        ),
        tool(
            "test_input_required_result_elicitation",
            "Asks for the user's name (input_required)",
            no_args(),
        ),
        tool(
            "test_input_required_result_sampling",
            "Asks the client to sample (input_required)",
            no_args(),
        ),
        tool(
            "test_input_required_result_list_roots",
            "Asks for the client's roots (input_required)",
            no_args(),
        ),
        tool(
            "test_input_required_result_request_state",
            "Round-trips an opaque requestState",
            no_args(),
        ),
        tool(
            "test_input_required_result_multiple_inputs",
            "Asks for elicitation, sampling and roots at once",
            no_args(),
        ),
        tool(
            "test_input_required_result_multi_round",
            "Asks twice, with an evolving requestState",
            no_args(),
        ),
        tool(
            "test_input_required_result_tampered_state",
            "Rejects a requestState that was altered",
            no_args(),
        ),
        tool(
            "test_input_required_result_capabilities",
            "Only asks for what the client declared",
            no_args(),
        ),
        tool(
            "test_header_param",
            "Echoes a region that must also travel in the Mcp-Param-Region header",
            json!({
                "type": "object",
                "properties": { "region": { "type": "string", "x-mcp-header": "Region" } },
                "required": ["region"]
            }),
        ),
        json!({
            "name": "run-rerun",
            "title": "Re-run a CI run",
            "description": "Re-runs a CI run (optionally only its failed jobs) and returns the new run",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "run_id": { "type": "string", "minLength": 1 },
                    "failed_only": { "type": "boolean" }
                },
                "required": ["run_id"]
            },
            "outputSchema": {
                "type": "object",
                "properties": {
                    "run_id": { "type": "string" },
                    "status": { "type": "string" },
                    "url": { "type": "string" },
                    "failed_only": { "type": "boolean" }
                },
                "required": ["run_id", "status", "url", "failed_only"]
            },
            "annotations": { "readOnlyHint": false, "destructiveHint": false, "idempotentHint": false, "openWorldHint": true }
        }),
        json!({
            "name": "echo",
            "description": "Returns its arguments as text",
            "inputSchema": { "type": "object", "additionalProperties": true },
            "annotations": { "readOnlyHint": true, "openWorldHint": false }
        }),
        tool(
            "fail",
            "Always answers with a JSON-RPC internal error (-32603)",
            json!({ "type": "object", "additionalProperties": true }),
        ),
        tool(
            "slow",
            "Sleeps for the given milliseconds, reporting progress when given a progress token",
            json!({ "type": "object", "properties": { "ms": { "type": "integer", "minimum": 0 } }, "required": ["ms"] }),
        ),
    ]
}

/// Direct resources, in `resources/list` order.
pub fn resources() -> Vec<Value> {
    vec![
        json!({ "uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain" }),
        json!({ "uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource (PNG)", "mimeType": "image/png" }),
        json!({ "uri": "test://watched-resource", "name": "watched-resource", "description": "A resource clients may subscribe to", "mimeType": "text/plain" }),
    ]
}

/// Resource templates.
pub fn resource_templates() -> Vec<Value> {
    vec![json!({
        "uriTemplate": "test://template/{id}/data",
        "name": "template-data",
        "description": "Data for an id",
        "mimeType": "application/json"
    })]
}

/// The contents of a resource, or `None` when the URI is unknown.
pub fn read_resource(uri: &str) -> Option<Value> {
    let content = match uri {
        "test://static-text" => json!({
            "uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."
        }),
        "test://static-binary" => {
            json!({ "uri": uri, "mimeType": "image/png", "blob": PNG_BASE64 })
        }
        "test://watched-resource" => {
            json!({ "uri": uri, "mimeType": "text/plain", "text": "Watched resource content." })
        }
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")?;
            if id.is_empty() || id.contains('/') {
                return None;
            }
            let text =
                json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") })
                    .to_string();
            json!({ "uri": uri, "mimeType": "application/json", "text": text })
        }
    };
    Some(json!({ "contents": [content] }))
}

/// Prompt definitions, in `prompts/list` order.
pub fn prompts() -> Vec<Value> {
    vec![
        json!({ "name": "test_simple_prompt", "description": "A simple prompt without arguments" }),
        json!({
            "name": "test_prompt_with_arguments",
            "description": "A prompt with two required arguments",
            "arguments": [
                { "name": "arg1", "description": "First test argument", "required": true },
                { "name": "arg2", "description": "Second test argument", "required": true }
            ]
        }),
        json!({
            "name": "test_prompt_with_embedded_resource",
            "description": "A prompt embedding a resource",
            "arguments": [{ "name": "resourceUri", "description": "URI of the resource to embed", "required": true }]
        }),
        json!({ "name": "test_prompt_with_image", "description": "A prompt with an image" }),
        json!({ "name": "test_input_required_result_prompt", "description": "A prompt that first asks the user for context" }),
    ]
}

/// Completion candidates for a prompt argument or template variable.
pub fn completions(argument: &str) -> &'static [&'static str] {
    match argument {
        "arg1" | "arg2" => &["paris", "park", "party", "test-alpha", "test-beta"],
        "id" => &["123", "456", "789"],
        "resourceUri" => &[
            "test://static-text",
            "test://static-binary",
            "test://watched-resource",
        ],
        _ => &[],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_valid_name_a_description_and_an_input_schema() {
        let re_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        for t in builtin_tools() {
            assert!(re_ok(t["name"].as_str().unwrap()), "{t}");
            assert!(t["description"].is_string(), "{t}");
            assert!(t["inputSchema"].is_object(), "{t}");
        }
    }

    #[test]
    fn a_template_uri_substitutes_its_id() {
        let r = read_resource("test://template/123/data").unwrap();
        assert!(r["contents"][0]["text"].as_str().unwrap().contains("123"));
        assert!(read_resource("test://nope").is_none());
    }

    #[test]
    fn the_wav_header_declares_its_length() {
        let wav = STANDARD.decode(wav_base64()).unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes([wav[4], wav[5], wav[6], wav[7]]) as usize,
            wav.len() - 8
        );
    }
}
