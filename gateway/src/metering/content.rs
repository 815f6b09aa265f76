//! Content capture for keys created with `store_content`: the request's messages and the
//! answer (text and tool calls), recorded as `RequestContentRecorded` for eval datasets.
//! Keys without the opt-in never reach this module, so their content is never written.

use serde::Deserialize;
use serde_json::value::RawValue;

use lumina_schemas::payloads::RequestContentRecorded;

#[derive(Deserialize)]
struct Messages<'a> {
    #[serde(borrow)]
    messages: &'a RawValue,
}

/// A tool call being assembled from stream deltas (or taken whole from a message).
#[derive(Default, serde::Serialize)]
struct ToolCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// Builds the content record from the request body and the answer's JSON pieces (one
/// completion body, or the chunks of a stream in order).
pub fn record<'a>(
    request_body: &[u8],
    answer: impl IntoIterator<Item = &'a [u8]>,
) -> RequestContentRecorded {
    let messages_json = serde_json::from_slice::<Messages<'_>>(request_body)
        .map(|m| m.messages.get().to_string())
        .unwrap_or_else(|_| "[]".to_string());
    let mut text = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for body in answer {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            continue;
        };
        let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
            continue;
        };
        for part in [&choice["message"], &choice["delta"]] {
            if let Some(t) = part["content"].as_str() {
                text.push_str(t);
            }
            for (n, call) in part["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let index = call["index"]
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .unwrap_or(n);
                if calls.len() <= index {
                    calls.resize_with(index + 1, ToolCall::default);
                }
                let slot = &mut calls[index];
                if let Some(id) = call["id"].as_str() {
                    slot.id = Some(id.to_string());
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    slot.name.push_str(name);
                }
                if let Some(args) = call["function"]["arguments"].as_str() {
                    slot.arguments.push_str(args);
                }
            }
        }
    }
    RequestContentRecorded {
        messages_json,
        answer: (!text.is_empty()).then_some(text),
        tool_calls_json: (!calls.is_empty())
            .then(|| serde_json::to_string(&calls).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_body_gives_messages_and_answer() {
        let body = br#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#;
        let answer = br#"{"choices":[{"message":{"role":"assistant","content":"hello"}}]}"#;
        let r = record(body, [&answer[..]]);
        assert_eq!(r.messages_json, r#"[{"role":"user","content":"hi"}]"#);
        assert_eq!(r.answer.as_deref(), Some("hello"));
        assert_eq!(r.tool_calls_json, None);
    }

    #[test]
    fn stream_deltas_are_joined_and_tool_calls_assembled() {
        let body = br#"{"messages":[{"role":"user","content":"weather?"}],"stream":true}"#;
        let chunks: [&[u8]; 4] = [
            br#"{"choices":[{"delta":{"content":"Let me "}}]}"#,
            br#"{"choices":[{"delta":{"content":"check."}}]}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"get_weather","arguments":"{\"ci"}}]}}]}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]}}]}"#,
        ];
        let r = record(body, chunks);
        assert_eq!(r.answer.as_deref(), Some("Let me check."));
        let calls: serde_json::Value =
            serde_json::from_str(r.tool_calls_json.as_deref().unwrap()).unwrap();
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["name"], "get_weather");
        assert_eq!(calls[0]["arguments"], r#"{"city":"Oslo"}"#);
    }
}
