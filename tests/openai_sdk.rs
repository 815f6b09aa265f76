//! The official OpenAI Python SDK against the real binary: it lists and retrieves models with
//! a Lumina key and surfaces Lumina's errors as its own exception types.
//!
//! Needs `LUMINA_TEST_PYTHON`, a Python with the `openai` package (`scripts/test.sh` builds one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::process::Command;

use common::Lumina;

fn python() -> String {
    std::env::var("LUMINA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LUMINA_TEST_PYTHON is not set: run ./scripts/test.sh, which creates a venv with the openai package")
    })
}

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
    let url = lumina.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-c", SCRIPT, &url, &good, &revoked])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.starts_with("ok "), "{stdout}");
}
