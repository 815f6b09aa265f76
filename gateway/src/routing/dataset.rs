//! Labelled routing items (`datasets/routing/README.md`): one JSON object per line with the
//! OpenAI `messages` (and optional `tools`, `response_format`, `reasoning_effort`) of a request
//! and the path it needs. Each item becomes the chat request body a client would send, so
//! training and evaluation see a request exactly as the gateway does.
//!
//! Lines of `lumina eval export` (`schema_version` 1) are read too, labelled by their feedback:
//! a `label` naming a path is that path; a `score` below 0.5 means the routed path was too weak
//! (the next stronger one); a higher score keeps the routed path. Lines without stored content
//! or without such feedback carry no label and are skipped (and counted).

use serde::Deserialize;
use serde_json::Value;

use crate::routing::catalog::RoutePath;
use crate::wire::ChatRequest;

/// One labelled request.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledItem {
    /// The item's id.
    pub id: String,
    /// The chat completion request body, `model` `lumina-auto`.
    pub body: String,
    /// The labelled path.
    pub path: RoutePath,
}

impl LabelledItem {
    /// The request, parsed as the gateway parses it.
    pub fn request(&self) -> Result<ChatRequest<'_>, DatasetError> {
        ChatRequest::parse(self.body.as_bytes()).map_err(|e| DatasetError {
            line: 0,
            message: format!("{}: {}", self.id, e.message),
        })
    }
}

/// A line that is not a labelled item.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DatasetError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

#[derive(Deserialize)]
struct Line {
    id: String,
    messages: Vec<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    path: String,
}

/// An `lumina eval export` line, as far as training reads it.
#[derive(Deserialize)]
struct ExportLine {
    request_id: String,
    route: ExportRoute,
    #[serde(default)]
    feedback: Option<ExportFeedback>,
    /// Eval results (export version 2).
    #[serde(default)]
    evals: Vec<ExportEval>,
    #[serde(default)]
    content: Option<ExportContent>,
}

#[derive(Deserialize)]
struct ExportEval {
    passed: bool,
}

#[derive(Deserialize)]
struct ExportRoute {
    path: String,
}

#[derive(Deserialize)]
struct ExportFeedback {
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    label: Option<String>,
}

#[derive(Deserialize)]
struct ExportContent {
    messages: Vec<Value>,
}

/// Feedback score below which the routed path was too weak.
const WEAK_SCORE: f64 = 0.5;

/// The next stronger path than `routed` (reasoning stays reasoning).
fn stronger(routed: RoutePath) -> RoutePath {
    match routed {
        RoutePath::Fast => RoutePath::Balanced,
        _ => RoutePath::Reasoning,
    }
}

/// The path an exported request needed, from its feedback; `None` when nothing says.
fn label_from_feedback(routed: RoutePath, feedback: &ExportFeedback) -> Option<RoutePath> {
    if let Some(path) = feedback.label.as_deref().and_then(parse_path) {
        return Some(path);
    }
    let score = feedback.score.filter(|s| s.is_finite())?;
    Some(if score < WEAK_SCORE {
        stronger(routed)
    } else {
        routed
    })
}

/// The path an exported request needed, from its eval results: a stronger one when any check
/// failed, the routed one when all passed; `None` without results.
fn label_from_evals(routed: RoutePath, evals: &[ExportEval]) -> Option<RoutePath> {
    if evals.is_empty() {
        return None;
    }
    Some(if evals.iter().all(|e| e.passed) {
        routed
    } else {
        stronger(routed)
    })
}

/// A parsed dataset: its labelled items, and the export lines that carried no label.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The items.
    pub items: Vec<LabelledItem>,
    /// Items labelled from exported feedback.
    pub from_feedback: usize,
    /// Items labelled from exported eval results (requests without feedback).
    pub from_evals: usize,
    /// Export lines skipped: no stored content, or neither feedback nor eval results that
    /// name a path.
    pub skipped: usize,
}

/// A path's name as labelled (`fast`, `balanced`, `reasoning`).
pub fn parse_path(name: &str) -> Option<RoutePath> {
    match name {
        "fast" => Some(RoutePath::Fast),
        "balanced" => Some(RoutePath::Balanced),
        "reasoning" => Some(RoutePath::Reasoning),
        _ => None,
    }
}

/// Parses a JSONL dataset; blank lines are skipped, any other bad line is an error naming it.
pub fn parse_items(text: &str) -> Result<Vec<LabelledItem>, DatasetError> {
    parse_dataset(text).map(|p| p.items)
}

/// Parses a JSONL dataset of labelled items or `lumina eval export` lines (or both).
pub fn parse_dataset(text: &str) -> Result<Parsed, DatasetError> {
    let mut parsed = Parsed::default();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let err = |message: String| DatasetError { line, message };
        let value: Value = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        if value.get("schema_version").is_some() {
            let l: ExportLine = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
            let routed = parse_path(&l.route.path);
            // A person's verdict first; the checks of an eval run where there is none.
            let by_feedback = routed
                .zip(l.feedback.as_ref())
                .and_then(|(r, f)| label_from_feedback(r, f));
            let by_evals = routed.and_then(|r| label_from_evals(r, &l.evals));
            let (Some(path), Some(content)) = (by_feedback.or(by_evals), l.content) else {
                parsed.skipped += 1;
                continue;
            };
            let body = serde_json::json!({"model": "lumina-auto", "messages": content.messages});
            let item = LabelledItem {
                id: l.request_id,
                body: body.to_string(),
                path,
            };
            item.request().map_err(|e| err(e.message))?;
            parsed.items.push(item);
            if by_feedback.is_some() {
                parsed.from_feedback += 1;
            } else {
                parsed.from_evals += 1;
            }
            continue;
        }
        let l: Line = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        let path = parse_path(&l.path).ok_or_else(|| {
            err(format!(
                "path: expected fast, balanced or reasoning, got '{}'",
                l.path
            ))
        })?;
        let mut body = serde_json::json!({"model": "lumina-auto", "messages": l.messages});
        if let Some(tools) = l.tools {
            body["tools"] = Value::Array(tools);
        }
        if let Some(format) = l.response_format {
            body["response_format"] = format;
        }
        if let Some(effort) = l.reasoning_effort {
            body["reasoning_effort"] = Value::String(effort);
        }
        let item = LabelledItem {
            id: l.id,
            body: body.to_string(),
            path,
        };
        item.request().map_err(|e| err(e.message))?;
        parsed.items.push(item);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_becomes_the_request_a_client_would_send() {
        let text = concat!(
            r#"{"id":"a","messages":[{"role":"user","content":"hi"}],"path":"fast","lang":"en"}"#,
            "\n\n",
            r#"{"id":"b","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f"}}],"path":"reasoning"}"#,
        );
        let items = parse_items(text).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].path, RoutePath::Fast);
        let r = items[1].request().unwrap();
        assert_eq!(r.tools.len(), 1);
        assert_eq!(
            r.response_format.as_ref().map(|f| f.as_str()),
            Some("json_object")
        );
    }

    #[test]
    fn exported_requests_are_labelled_by_their_feedback() {
        let line = |path: &str, feedback: Value, content: bool| {
            serde_json::json!({"schema_version": 1, "request_id": format!("req_{path}"),
                "route": {"path": path, "task_class": "chat"},
                "feedback": feedback,
                "content": content.then(|| serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "answer": "hello", "tool_calls": null}))})
            .to_string()
        };
        let text = [
            line(
                "fast",
                serde_json::json!({"score": 0.0, "label": null, "comment": null}),
                true,
            ),
            line(
                "balanced",
                serde_json::json!({"score": 0.9, "label": null, "comment": null}),
                true,
            ),
            line(
                "reasoning",
                serde_json::json!({"score": 1.0, "label": "fast", "comment": null}),
                true,
            ),
            line(
                "fast",
                serde_json::json!({"score": 0.0, "label": null, "comment": null}),
                false,
            ),
            line("fast", Value::Null, true),
            r#"{"id":"a","messages":[{"role":"user","content":"hi"}],"path":"fast"}"#.to_string(),
        ]
        .join("\n");
        let parsed = parse_dataset(&text).unwrap();
        let paths: Vec<RoutePath> = parsed.items.iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                RoutePath::Balanced,
                RoutePath::Balanced,
                RoutePath::Fast,
                RoutePath::Fast
            ]
        );
        assert_eq!((parsed.from_feedback, parsed.skipped), (3, 2));
    }

    #[test]
    fn exported_requests_without_feedback_are_labelled_by_their_eval_results() {
        let line = |path: &str, feedback: Value, evals: Value| {
            serde_json::json!({"schema_version": 2, "request_id": format!("req_{path}"),
                "route": {"path": path, "task_class": "chat"},
                "feedback": feedback, "evals": evals,
                "content": {"messages": [{"role": "user", "content": "hi"}], "answer": "a", "tool_calls": null}})
            .to_string()
        };
        let result = |passed: bool| serde_json::json!({"run_id": "r", "dataset": "d", "item_id": "i", "check_kind": "exact", "score": if passed { 1.0 } else { 0.0 }, "passed": passed});
        let text = [
            // One failed check: the routed path was too weak.
            line(
                "fast",
                Value::Null,
                serde_json::json!([result(true), result(false)]),
            ),
            // Every check passed: the routed path was enough.
            line("balanced", Value::Null, serde_json::json!([result(true)])),
            // Feedback outranks the checks.
            line(
                "fast",
                serde_json::json!({"score": 1.0, "label": null, "comment": null}),
                serde_json::json!([result(false)]),
            ),
            // Nothing says.
            line("fast", Value::Null, serde_json::json!([])),
        ]
        .join("\n");
        let parsed = parse_dataset(&text).unwrap();
        let paths: Vec<RoutePath> = parsed.items.iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [RoutePath::Balanced, RoutePath::Balanced, RoutePath::Fast]
        );
        assert_eq!(
            (parsed.from_feedback, parsed.from_evals, parsed.skipped),
            (1, 2, 1)
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"id\":\"a\",\"messages\":[],\"path\":\"fast\"}\n{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"path\":\"slow\"}";
        let err = parse_items(text).unwrap_err();
        assert_eq!(err.line, 1, "{err}");
        let err = parse_items(text.lines().nth(1).unwrap()).unwrap_err();
        assert!(err.message.contains("slow"), "{err}");
    }
}
