//! What a client controls has a bound, and nothing it sends gets around a hold: the real
//! `lumina serve` probed with `n`, duplicate JSON members, silent and slow connections,
//! overflowing money and times, and back-to-back requests on a tight balance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::upstream::{GATEWAY_ENV, MockUpstream, Mocked, gateway_config};
use common::{Lumina, assert_openai_error};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(extra: &str) -> Mocked {
    Mocked::with(extra).await
}

fn user(text: &str) -> Value {
    common::user("lumina-fast", text)
}

/// POSTs `body` as raw bytes (so it can hold what JSON libraries would not write).
async fn post_raw(lumina: &Lumina, path: &str, key: &str, body: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}{path}", lumina.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

#[tokio::test]
async fn n_is_bounded_and_multiplies_the_hold_and_the_token_limit() {
    let s = setup("").await;
    let rich = s.lumina.account("N Co", "10").await;
    let (_, key) = s.lumina.key_with(&rich, json!({"tpm": 1000})).await;
    for n in [10_000u64, 4_294_967_295, 9] {
        let mut body = user("many choices");
        body["n"] = json!(n);
        body["max_tokens"] = json!(1);
        let (status, v) =
            post_raw(&s.lumina, "/v1/chat/completions", &key, &body.to_string()).await;
        assert_eq!(status, 400, "n={n}: {v}");
        assert_eq!(assert_openai_error(&v)["param"], "n");
    }
    // 8 choices of 100 tokens: 800 completion tokens count against the TPM limit at once, so
    // a second such request is over it.
    let mut body = user("eight choices");
    body["n"] = json!(8);
    body["max_tokens"] = json!(100);
    let (status, _, text) = s.lumina.chat(&key, &body).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = s.lumina.chat(&key, &body).await;
    assert_eq!(status, 429, "{text}");
    // The hold covers every choice: 8 × 48 tokens at the fast output price (0.8 per million)
    // is more than 0.0001 credits, one choice is not.
    let poor = s.lumina.account("Poor Co", "0.0001").await;
    let (_, key) = s.lumina.key(&poor).await;
    body["max_tokens"] = json!(48);
    let (status, _, text) = s.lumina.chat(&key, &body).await;
    assert_eq!(status, 402, "{text}");
    body["n"] = json!(1);
    let (status, _, text) = s.lumina.chat(&key, &body).await;
    assert_eq!(status, 200, "{text}");
    let b = s.lumina.balance(&poor).await;
    assert!(b["available_nano"].as_i64().unwrap() >= 0, "{b}");
}

#[tokio::test]
async fn a_member_sent_twice_is_refused_before_anything_is_metered() {
    let s = setup("").await;
    let account = s.lumina.account("Dup Co", "0.001").await;
    let (_, key) = s.lumina.key_with(&account, json!({"tpm": 1000})).await;
    let cases = [
        (
            r#"{"model":"lumina-fast","max_tokens":1,"max_tokens":1000000,"messages":[{"role":"user","content":"hi"}]}"#,
            "max_tokens",
        ),
        (
            r#"{"model":"lumina-fast","n":1,"messages":[{"role":"user","content":"hi"}],"n":8}"#,
            "n",
        ),
        (
            r#"{"model":"lumina-fast","messages":[{"role":"user","content":"hi"}],"messages":[{"role":"user","content":"a much longer prompt"}]}"#,
            "messages",
        ),
        (
            r#"{"model":"lumina-fast","messages":[{"role":"user","content":"hi","content":"other"}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"model":"lumina-fast","stream":false,"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            "stream",
        ),
        (
            r#"{"model":"lumina-fast","max_tokens":1,"max\u005ftokens":9000,"messages":[{"role":"user","content":"hi"}]}"#,
            "max_tokens",
        ),
    ];
    for (body, param) in cases {
        let (status, v) = post_raw(&s.lumina, "/v1/chat/completions", &key, body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(assert_openai_error(&v)["param"], param, "{body}");
    }
    // Every other inbound surface follows the same rule.
    let others = [
        (
            "/v1/responses",
            r#"{"model":"lumina-fast","input":"hi","max_output_tokens":16,"max_output_tokens":100000}"#,
            "max_output_tokens",
        ),
        (
            "/v1/embeddings",
            r#"{"model":"lumina-embeddings","input":"hi","input":["a","b"]}"#,
            "input",
        ),
    ];
    for (path, body, param) in others {
        let (status, v) = post_raw(&s.lumina, path, &key, body).await;
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(assert_openai_error(&v)["param"], param, "{path} {body}");
    }
    let (status, v) = post_raw(
        &s.lumina,
        "/v1/messages",
        &key,
        r#"{"model":"lumina-fast","max_tokens":1,"max_tokens":100000,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["type"], "error", "Anthropic's error shape: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{v}"
    );
    assert!(
        s.mock.requests().is_empty(),
        "a duplicate reached the upstream"
    );
    // The admin API follows the same rule.
    let (status, v) = post_raw(
        &s.lumina,
        "/admin/accounts",
        &s.lumina.admin_key,
        r#"{"name":"a","credits":"1","credits":"1000000"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(assert_openai_error(&v)["param"], "credits");
    let b = s.lumina.balance(&account).await;
    assert_eq!(b["available_nano"], 1_000_000, "{b}");
}

#[tokio::test]
async fn silent_connections_cannot_lock_out_clients_that_talk() {
    // This test opens 1,100 sockets itself.
    rlimit::increase_nofile_limit(4096).unwrap();
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = gateway_config(&mock, "[server]\nheader_timeout_ms = 2000\n");
    let lumina = Lumina::start_in_shell(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &GATEWAY_ENV,
        Some(&config),
        "ulimit -n 1024",
    )
    .await;
    let addr = lumina.url.trim_start_matches("http://").to_string();
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..1100 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    while opened.elapsed() < Duration::from_secs(3) {
        let answered = tokio::time::timeout(
            Duration::from_secs(1),
            client.get(format!("{}/healthz", lumina.url)).send(),
        )
        .await;
        assert!(
            matches!(&answered, Ok(Ok(r)) if r.status() == 200),
            "/healthz did not answer within 1 s after {:?}: {answered:?}",
            opened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every silent connection is closed within the header timeout of its acceptance.
    let deadline = opened + Duration::from_secs(5);
    for (i, mut stream) in silent.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(left, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "silent connection {i} still open after {:?}",
            opened.elapsed()
        );
    }
    // The bound sits below the descriptor limit, and every silent connection is accounted
    // for: shed to make room for a newer one, or closed at its header timeout.
    let limit = lumina.metric("lumina_http_connections_limit").await;
    assert!(limit > 0.0 && limit < 1024.0, "limit {limit}");
    let shed = lumina.metric("lumina_http_connections_shed_total").await;
    let timed_out = lumina
        .metric("lumina_http_connections_silent_closed_total")
        .await;
    assert!(
        shed > 0.0,
        "nothing shed with 1,100 connections and a bound of {limit}"
    );
    assert!(
        shed + timed_out >= 1100.0,
        "shed {shed}, timed out {timed_out}"
    );
}

/// A connection that never sends a byte does not hold shutdown up until its header timeout
/// (here the default, 10 s): SIGTERM ends the process promptly.
#[tokio::test]
async fn a_silent_connection_does_not_delay_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    let addr = lumina.url.trim_start_matches("http://").to_string();
    let _silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = lumina.terminate().await;
    assert!(
        took < Duration::from_secs(5),
        "exit on SIGTERM took {took:?} with a silent connection open"
    );
}

/// Sends headers for a `length`-byte body, then the body at one byte per second; returns the
/// status line of the answer and how long it took.
async fn drip(lumina: &Lumina, path: &str, key: &str, length: usize) -> (String, Duration) {
    let addr = lumina.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..length {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), read.read(&mut answer))
        .await
        .expect("no answer to a slow body")
        .unwrap();
    writer.abort();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    (
        text.lines().next().unwrap_or("").to_string(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_slow_body_gets_408_on_every_route() {
    let s = setup("[server]\nbody_timeout_ms = 2000\n").await;
    let account = s.lumina.account("Slow Co", "1").await;
    let (_, key) = s.lumina.key(&account).await;
    let admin = s.lumina.admin_key.clone();
    for (path, bearer) in [
        ("/v1/feedback", key.as_str()),
        ("/admin/accounts", admin.as_str()),
        ("/v1/chat/completions", key.as_str()),
    ] {
        let (status, took) = drip(&s.lumina, path, bearer, 100).await;
        assert!(status.contains(" 408 "), "{path}: {status}");
        assert!(took < Duration::from_secs(4), "{path}: {took:?}");
    }
}

#[tokio::test]
async fn money_and_times_from_outside_are_range_checked() {
    let s = setup("").await;
    let account = s.lumina.account("Big Co", "10").await;
    for amount in ["9223372036.854775807", "1000000000", "999999991"] {
        let (status, v) = post_raw(
            &s.lumina,
            &format!("/admin/accounts/{account}/credits"),
            &s.lumina.admin_key,
            &json!({"amount": amount}).to_string(),
        )
        .await;
        assert_eq!(status, 400, "{amount}: {v}");
        assert_eq!(assert_openai_error(&v)["param"], "amount");
    }
    // Up to the bound is fine, and the account stays readable.
    let (status, v) = post_raw(
        &s.lumina,
        &format!("/admin/accounts/{account}/credits"),
        &s.lumina.admin_key,
        r#"{"amount":"999999990"}"#,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let b = s.lumina.balance(&account).await;
    assert_eq!(b["granted_nano"], 1_000_000_000_000_000_000i64, "{b}");
    let (status, v) = post_raw(
        &s.lumina,
        "/admin/accounts",
        &s.lumina.admin_key,
        r#"{"name":"too big","credits":"1000000000.000000001"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (_, key) = s.lumina.key(&account).await;
    for (query, param) in [
        (
            "start_time=-9223372036854775808&end_time=9223372036854775807",
            "start_time",
        ),
        ("start_time=0&end_time=9223372036854775807", "end_time"),
    ] {
        let (status, _, v) = s
            .lumina
            .request(
                reqwest::Method::GET,
                &format!("/v1/usage?{query}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(assert_openai_error(&v)["param"], param);
    }
    for limits in [json!({"rpm": 4_294_967_296i64}), json!({"tpm": 1i64 << 40})] {
        let (status, v) = post_raw(&s.lumina, "/admin/keys", &s.lumina.admin_key, &{
            let mut body = json!({"account_id": account, "name": "k"});
            body.as_object_mut()
                .unwrap()
                .extend(limits.as_object().unwrap().clone());
            body.to_string()
        })
        .await;
        assert_eq!(status, 400, "{limits}: {v}");
    }
}

#[tokio::test]
async fn a_fresh_data_dir_is_private_whatever_the_umask() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let lumina = Lumina::start_in_shell(
        &data,
        &tmp.path().join("out"),
        &GATEWAY_ENV,
        Some(&gateway_config(&mock, "")),
        "umask 022",
    )
    .await;
    let account = lumina.account("Private Co", "1").await;
    let (_, key) = lumina
        .key_with(&account, json!({"store_content": true}))
        .await;
    let (status, _, _) = lumina.chat(&key, &user("a secret prompt")).await;
    assert_eq!(status, 200);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    assert!(files >= 4, "{files} files");
}

#[tokio::test]
async fn back_to_back_requests_whose_holds_fit_one_after_the_other_both_pass() {
    let s = setup("").await;
    // Room for one hold of 1,000 output tokens (0.0008 credits and a little prompt) at a
    // time, and for many of the small charges the mock's answers cost.
    let account = s.lumina.account("Tight Co", "0.0012").await;
    let (_, key) = s.lumina.key(&account).await;
    let mut body = user("hold me");
    body["max_tokens"] = json!(1000);
    for i in 0..6 {
        let (status, _, text) = s.lumina.chat(&key, &body).await;
        assert_eq!(status, 200, "request {i}: {text}");
    }
}
