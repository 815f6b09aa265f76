//! `usage.cost`: the charge of a completion, written into the JSON the client receives (the
//! response body, or a stream's final usage chunk) as a decimal number of credits exact to the
//! nano-credit. The number is written as text: no float ever carries money.

use bytes::Bytes;
use lumina_schemas::NanoCredits;

use crate::wire::{RawObject, TokenUsage, UsageOut, json_string};

/// `json` (an OpenAI completion or chunk) with `usage.cost` set to `charge`; when it has no
/// `usage`, or `replace_usage` says the upstream's is not what was billed, `usage` is the one
/// Lumina counted. Unparseable input is returned unchanged.
pub fn with_cost(
    json: &[u8],
    usage: TokenUsage,
    charge: NanoCredits,
    replace_usage: bool,
) -> Bytes {
    match rewrite(json, usage, charge, replace_usage) {
        Some(out) => Bytes::from(out),
        None => Bytes::copy_from_slice(json),
    }
}

fn push_member(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.extend_from_slice(json_string(key).as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

fn usage_with_cost(usage: Option<&str>, counted: TokenUsage, cost: &str) -> Option<String> {
    let counted_json;
    let usage = match usage {
        Some(u) if u != "null" => u,
        _ => {
            counted_json = serde_json::to_string(&UsageOut::from(counted)).ok()?;
            &counted_json
        }
    };
    let members: RawObject<'_> = serde_json::from_str(usage).ok()?;
    let mut out = Vec::with_capacity(usage.len() + 24);
    out.push(b'{');
    let mut first = true;
    for (k, v) in &members.0 {
        if k.as_str() != "cost" {
            push_member(&mut out, &mut first, k.as_str(), v.get());
        }
    }
    push_member(&mut out, &mut first, "cost", cost);
    out.push(b'}');
    String::from_utf8(out).ok()
}

fn rewrite(
    json: &[u8],
    counted: TokenUsage,
    charge: NanoCredits,
    replace_usage: bool,
) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(json).ok()?;
    let members: RawObject<'_> = serde_json::from_str(text).ok()?;
    let cost = charge.to_string();
    let mut out = Vec::with_capacity(json.len() + 32);
    out.push(b'{');
    let mut first = true;
    let mut wrote_usage = false;
    for (k, v) in &members.0 {
        if k.as_str() == "usage" {
            let reported = (!replace_usage).then(|| v.get());
            let usage = usage_with_cost(reported, counted, &cost)?;
            push_member(&mut out, &mut first, "usage", &usage);
            wrote_usage = true;
        } else {
            push_member(&mut out, &mut first, k.as_str(), v.get());
        }
    }
    if !wrote_usage {
        let usage = usage_with_cost(None, counted, &cost)?;
        push_member(&mut out, &mut first, "usage", &usage);
    }
    out.push(b'}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_added_to_the_usage_object_as_an_exact_decimal() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"model":"m"}"#;
        let out = with_cost(
            body,
            TokenUsage::default(),
            NanoCredits(1_234_567_891),
            false,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(r#""cost":1.234567891"#), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["model"], "m");
        let tiny = with_cost(body, TokenUsage::default(), NanoCredits(1), false);
        assert!(
            std::str::from_utf8(&tiny)
                .unwrap()
                .contains(r#""cost":0.000000001"#)
        );
    }

    #[test]
    fn a_body_without_usage_gets_the_counted_usage_and_its_cost() {
        let counted = TokenUsage {
            prompt_tokens: 5,
            completion_tokens: 2,
            cached_tokens: 0,
            reasoning_tokens: 0,
        };
        let out = with_cost(
            br#"{"id":"x","choices":[]}"#,
            counted,
            NanoCredits(0),
            false,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["usage"]["cost"], 0);
        let replaced = with_cost(br#"{"usage":{"cost":9}}"#, counted, NanoCredits(5), false);
        assert_eq!(
            std::str::from_utf8(&replaced).unwrap(),
            r#"{"usage":{"cost":0.000000005}}"#
        );
        let clamped = with_cost(
            br#"{"usage":{"completion_tokens":1000000000000}}"#,
            counted,
            NanoCredits(5),
            true,
        );
        let v: serde_json::Value = serde_json::from_slice(&clamped).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 2);
        assert_eq!(v["usage"]["total_tokens"], 7);
    }
}
