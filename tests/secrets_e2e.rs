//! Secrets never leak: a run with every kind of secret Lumina holds — the admin key, the key
//! secret, provider keys, customer keys — including an upstream that repeats the provider key
//! it was sent in its error, and clients that present wrong keys; then the gateway's logs, its
//! events (`lumina replay`), `/metrics`, the request traces, the usage views, the eval export
//! and every answer the clients got are searched for each secret: none is found. CORS stays
//! closed and the admin API refuses customer keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::upstream::{MockUpstream, gateway_config};
use common::{Lumina, assert_openai_error, run, user};
use reqwest::Method;
use serde_json::json;

const ADMIN_KEY: &str = "adm-secret-0123456789abcdef0123456789";
const PROVIDER_KEY: &str = "sk-primary-secret";
const ANTHROPIC_KEY: &str = "sk-ant-secret";

#[tokio::test]
async fn no_secret_appears_in_logs_events_metrics_traces_exports_or_answers() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let key_secret = "5e".repeat(32);
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &[
            ("MOCK_PRIMARY_KEY", PROVIDER_KEY),
            ("MOCK_ANTHROPIC_KEY", ANTHROPIC_KEY),
            ("LUMINA_ADMIN_KEY", ADMIN_KEY),
            ("LUMINA_KEY_SECRET", key_secret.as_str()),
            (
                "LUMINA_LOG",
                "debug,sqlx=warn,hyper=info,h2=info,rustls=info",
            ),
        ],
        Some(&gateway_config(&mock, "")),
    )
    .await;
    let account = lumina.account("Hygiene", "5").await;
    let (_, key) = lumina
        .key_with(&account, json!({"store_content": true}))
        .await;
    let mut answers = String::new();

    // Ordinary traffic, streamed and not, on every provider.
    for model in ["lumina-fast", "lumina-reasoning"] {
        for stream in [false, true] {
            let mut body = user(model, "Tell me a secret.");
            body["stream"] = json!(stream);
            let (status, headers, text) = lumina.chat(&key, &body).await;
            assert_eq!(status, 200, "{text}");
            answers.push_str(&format!("{headers:?}{text}"));
        }
    }
    // An upstream that repeats the key it was sent, on both deployments of the path.
    mock.set("primary", "echo401");
    mock.set("secondary", "echo401");
    let (status, headers, text) = lumina.chat(&key, &user("lumina-fast", "again")).await;
    assert!(status >= 400, "{text}");
    answers.push_str(&format!("{headers:?}{text}"));
    // An upstream that repeats the key in a client error, which is relayed to the client.
    mock.set("primary", "echo400");
    let (status, headers, text) = lumina.chat(&key, &user("lumina-fast", "again")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    answers.push_str(&format!("{headers:?}{text}"));
    mock.set("primary", "ok");
    mock.set("secondary", "ok");
    // Wrong keys: a customer key one digit off, the admin key on a customer route and a
    // customer key on the admin API.
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let (status, _, v) = lumina
        .request(Method::GET, "/v1/models", Some(&wrong), None)
        .await;
    assert_eq!(status, 401);
    answers.push_str(&v.to_string());
    let (status, _, v) = lumina
        .request(Method::GET, "/admin/keys", Some(&key), None)
        .await;
    assert_eq!(status, 401, "the admin API refuses a customer key: {v}");
    assert_eq!(assert_openai_error(&v)["code"], "admin_key_required");
    answers.push_str(&v.to_string());
    let (status, _, v) = lumina
        .request(Method::GET, "/v1/models", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 401, "{v}");
    answers.push_str(&v.to_string());

    // CORS is closed: no preflight is granted, no answer names an allowed origin.
    let http = reqwest::Client::new();
    assert_eq!(
        allowed_origin(&lumina, "/v1/chat/completions", "https://evil.example").await,
        None
    );
    let with_origin = http
        .get(format!("{}/v1/models", lumina.url))
        .bearer_auth(&key)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        with_origin
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Everything the run left behind.
    let mut surfaces: Vec<(&str, String)> = vec![("answers", answers)];
    for path in [
        "/v1/requests?limit=100",
        "/v1/usage?start_time=0&limit=2",
        "/v1/models",
    ] {
        let (_, _, v) = lumina.request(Method::GET, path, Some(&key), None).await;
        surfaces.push(("customer views", v.to_string()));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let listed = loop {
        let (_, _, listed) = lumina
            .request(Method::GET, "/v1/requests?limit=100", Some(&key), None)
            .await;
        if listed["data"].as_array().map_or(0, Vec::len) >= 6
            || std::time::Instant::now() > deadline
        {
            break listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let requests = listed["data"].as_array().unwrap();
    assert_eq!(requests.len(), 6, "{listed}");
    for r in requests {
        let id = r["id"].as_str().unwrap();
        let (_, _, v) = lumina
            .request(Method::GET, &format!("/v1/requests/{id}"), Some(&key), None)
            .await;
        surfaces.push(("trace", v.to_string()));
    }
    for path in [
        "/admin/keys",
        "/admin/requests?limit=100",
        "/admin/routes/stats",
    ] {
        let v = lumina.admin(Method::GET, path, None, 200).await;
        surfaces.push(("admin views", v.to_string()));
    }
    surfaces.push(("metrics", lumina.metrics_text().await));
    let data = lumina.data_dir.to_str().unwrap().to_string();
    let (ok, events, stderr) = run(&["replay", "--data-dir", &data], &[]);
    assert!(ok, "{stderr}");
    assert!(events.lines().count() > 10);
    surfaces.push(("events", events));
    let (ok, export, stderr) = run(
        &[
            "eval",
            "export",
            "--data-dir",
            &data,
            "--since",
            "2020-01-01",
            "--out",
            "-",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(
        export.contains("Tell me a secret."),
        "content is exported for a key that stores it"
    );
    surfaces.push(("eval export", export));
    surfaces.push(("logs", lumina.output()));
    assert!(
        lumina.output().contains("DEBUG"),
        "the logs were searched at debug level"
    );

    let secrets = [
        ("the admin key", ADMIN_KEY),
        ("the key secret", key_secret.as_str()),
        ("a provider key", PROVIDER_KEY),
        ("a provider key", ANTHROPIC_KEY),
        ("a customer key", key.as_str()),
        ("a wrong customer key", wrong.as_str()),
    ];
    for (what, text) in &surfaces {
        for (secret_name, secret) in secrets {
            assert!(
                !text.contains(secret),
                "{secret_name} appears in the {what}:\n{}",
                excerpt(text, secret)
            );
        }
    }
}

/// The origin a CORS preflight from `origin` for `path` is granted, if any.
async fn allowed_origin(lumina: &Lumina, path: &str, origin: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}{path}", lumina.url))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    r.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

/// The text around the first `needle`.
fn excerpt(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(i, _)| i);
    text[start..].chars().take(400 + needle.len()).collect()
}

#[tokio::test]
async fn cors_opens_the_v1_api_to_configured_origins_only_and_never_the_admin_api() {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &[],
        Some("[server]\ncors_origins = [\"https://app.example.com\"]\n"),
    )
    .await;
    assert_eq!(
        allowed_origin(&lumina, "/v1/chat/completions", "https://app.example.com").await,
        Some("https://app.example.com".into())
    );
    assert_eq!(
        allowed_origin(&lumina, "/v1/chat/completions", "https://evil.example").await,
        None
    );
    assert_eq!(
        allowed_origin(&lumina, "/admin/keys", "https://app.example.com").await,
        None,
        "the admin API is never open to a browser origin"
    );
}
