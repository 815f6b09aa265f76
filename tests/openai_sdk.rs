//! The official OpenAI Python SDK against the real binary: it lists and retrieves models with
//! a Lumina key and surfaces Lumina's errors as its own exception types.
//!
//! Needs `LUMINA_TEST_PYTHON`, a Python with the `openai` package (`scripts/test.sh` builds one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::upstream::Mocked;
use common::{Lumina, run_python};

const SCRIPT: &str = r#"
import sys, openai
from openai import OpenAI
base, good, revoked = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key=good, max_retries=0)
ids = [m.id for m in client.models.list()]
assert "lumina-auto" in ids and "lumina-thinking" in ids, ids
m = client.models.retrieve("lumina-fast")
assert m.id == "lumina-fast" and m.owned_by == "lumina", m
try:
    client.models.retrieve("gpt-nope")
    raise SystemExit("unknown model did not fail")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    OpenAI(base_url=base + "/v1", api_key="lum_wrong", max_retries=0).models.list()
    raise SystemExit("wrong key did not fail")
except openai.AuthenticationError as e:
    assert e.code == "invalid_api_key", e.code
try:
    OpenAI(base_url=base + "/v1", api_key=revoked, max_retries=0).models.list()
    raise SystemExit("revoked key did not fail")
except openai.PermissionDeniedError as e:
    assert e.code == "api_key_revoked", e.code
    assert e.response.headers.get("x-request-id", "").startswith("req_")
print("ok", len(ids))
"#;

#[tokio::test]
async fn the_openai_python_sdk_lists_models_and_understands_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    let account = lumina.account("SDK", "1").await;
    let (_, good) = lumina.key(&account).await;
    let (revoked_id, revoked) = lumina.key(&account).await;
    lumina
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/keys/{revoked_id}"),
            None,
            200,
        )
        .await;
    let stdout = run_python(SCRIPT, vec![lumina.url.clone(), good, revoked]).await;
    assert!(stdout.starts_with("ok "), "{stdout}");
}

const CHAT_SCRIPT: &str = r#"
import sys, json, openai
from openai import OpenAI
base, good, limited = sys.argv[1], sys.argv[2], sys.argv[3]
c = OpenAI(base_url=base + "/v1", api_key=good, max_retries=0)

r = c.chat.completions.create(model="lumina-fast", messages=[{"role": "user", "content": "hello sdk"}])
assert r.object == "chat.completion", r
assert r.choices[0].message.content == "Mock answer to: hello sdk", r
assert r.choices[0].finish_reason == "stop"
assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 7, r.usage
assert r.usage.prompt_tokens_details.cached_tokens == 3
assert r.usage.completion_tokens_details.reasoning_tokens == 2

raw = c.chat.completions.with_raw_response.create(model="lumina-fast", messages=[{"role": "user", "content": "x"}])
assert raw.headers["x-lumina-route"] == "fast" and raw.headers["x-lumina-attempts"] == "1"

text, usage = "", None
for chunk in c.chat.completions.create(model="lumina-balanced", messages=[{"role": "user", "content": "stream me"}],
                                       stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert text == "Mock answer to: stream me", text
assert usage is not None and usage.completion_tokens == 7

chunks = list(c.chat.completions.create(model="lumina-balanced", messages=[{"role": "user", "content": "no usage"}], stream=True))
assert all(ch.usage is None for ch in chunks)

tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
r = c.chat.completions.create(model="lumina-reasoning", tools=tools, messages=[{"role": "user", "content": "weather in Paris?"}])
call = r.choices[0].message.tool_calls[0]
assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, call
assert r.choices[0].finish_reason == "tool_calls"

args = ""
for chunk in c.chat.completions.create(model="lumina-reasoning", tools=tools, stream=True,
                                       messages=[{"role": "user", "content": "weather in Paris?"}]):
    for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        args += tc.function.arguments or ""
assert json.loads(args) == {"city": "Paris"}, args

follow = c.chat.completions.create(model="lumina-reasoning", tools=tools, messages=[
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
assert follow.choices[0].message.content.startswith("Claude mock answer")

assert "lumina-auto" in [m.id for m in c.models.list()]

def raises(kind, fn):
    try:
        fn()
    except kind as e:
        return e
    raise SystemExit(f"expected {kind.__name__}")

raises(openai.AuthenticationError, lambda: OpenAI(base_url=base + "/v1", api_key="lum_nope", max_retries=0)
       .chat.completions.create(model="lumina-fast", messages=[{"role": "user", "content": "x"}]))
e = raises(openai.NotFoundError, lambda: c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}]))
assert e.code == "model_not_found"
e = raises(openai.BadRequestError, lambda: c.chat.completions.create(model="lumina-fast", messages=[{"role": "wizard", "content": "x"}]))
assert e.param == "messages[0].role", e.param
lc = OpenAI(base_url=base + "/v1", api_key=limited, max_retries=0)
lc.chat.completions.create(model="lumina-fast", messages=[{"role": "user", "content": "x"}])
e = raises(openai.RateLimitError, lambda: lc.chat.completions.create(model="lumina-fast", messages=[{"role": "user", "content": "x"}]))
assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
print("ok")
"#;

#[tokio::test]
async fn the_openai_python_sdk_drives_chat_completions_streams_tools_and_errors() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::with("").await;
    mock.set("claude", "tools");
    let account = lumina.account("SDK chat", "5").await;
    let (_, good) = lumina.key(&account).await;
    let (_, limited) = lumina
        .key_with(&account, serde_json::json!({"rpm": 1}))
        .await;
    let stdout = run_python(CHAT_SCRIPT, vec![lumina.url.clone(), good, limited]).await;
    assert!(stdout.starts_with("ok"), "{stdout}");
}
