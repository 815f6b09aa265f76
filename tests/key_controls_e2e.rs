//! Key controls against the real binary: an expiry, scopes (paths, inbound APIs, read-only),
//! `max_parallel_requests`, and rotation with an overlap — each refusal the documented error
//! in OpenAI's shape, each control an event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Lumina, assert_openai_error, header, payloads, run, user};
use reqwest::Method;
use serde_json::{Value, json};

/// A simulated provider that takes `latency_ms` to answer.
fn slow_simulated(latency_ms: u64) -> String {
    format!(
        "[[providers]]\nname = \"sim\"\nkind = \"simulated\"\nmodels = {{ fast = \"f\", balanced = \"b\", reasoning = \"r\", embeddings = \"e\" }}\n[providers.simulated]\nlatency_ms = {latency_ms}\n"
    )
}

async fn start(config: Option<&str>) -> (tempfile::TempDir, Lumina) {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &[],
        config,
    )
    .await;
    (tmp, lumina)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The error `code` of a refused chat request, asserting its status.
async fn refused(lumina: &Lumina, key: &str, model: &str, status: u16) -> Value {
    let (code, _, text) = lumina.chat(key, &user(model, "hello")).await;
    assert_eq!(code, status, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_openai_error(&v).clone()
}

#[tokio::test]
async fn expired_and_out_of_scope_keys_get_the_documented_errors() {
    let (_tmp, lumina) = start(None).await;
    let account = lumina.account("Scoped", "5").await;

    // Expiry: works until the instant, then 401 api_key_expired.
    let (_, expiring) = lumina
        .key_with(&account, json!({"expires_at": now_secs() + 2}))
        .await;
    let (status, _, _) = lumina.chat(&expiring, &user("lumina-fast", "hi")).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let e = refused(&lumina, &expiring, "lumina-fast", 401).await;
    assert_eq!(e["code"], "api_key_expired");

    // Paths: an explicit model outside them is 403; lumina-auto stays within them.
    let (_, fast_only) = lumina
        .key_with(&account, json!({"scopes": {"paths": ["fast"]}}))
        .await;
    let e = refused(&lumina, &fast_only, "lumina-reasoning", 403).await;
    assert_eq!(e["code"], "model_not_allowed");
    assert_eq!(e["param"], "model");
    let proof = "Prove step by step that there are infinitely many primes, then explain why the \
                 proof generalizes to primes of the form 4k+3.";
    let (status, headers, _) = lumina.chat(&fast_only, &user("lumina-auto", proof)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lumina-route"), "fast");
    let (_, unscoped) = lumina.key(&account).await;
    let (_, headers, _) = lumina.chat(&unscoped, &user("lumina-auto", proof)).await;
    assert_ne!(
        header(&headers, "x-lumina-route"),
        "fast",
        "the same prompt goes further without the scope"
    );

    // Surfaces: a key for Anthropic's Messages only may not call chat completions.
    let (_, messages_only) = lumina
        .key_with(&account, json!({"scopes": {"surfaces": ["messages"]}}))
        .await;
    let e = refused(&lumina, &messages_only, "lumina-fast", 403).await;
    assert_eq!(e["code"], "surface_not_allowed");
    let (status, _, v) = lumina
        .request(
            Method::POST,
            "/v1/messages",
            Some(&messages_only),
            Some(
                &json!({"model": "lumina-fast", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // Read-only: no completion, but usage and requests.
    let (_, reader) = lumina
        .key_with(&account, json!({"scopes": {"read_only": true}}))
        .await;
    let e = refused(&lumina, &reader, "lumina-fast", 403).await;
    assert_eq!(e["code"], "read_only_key");
    for path in ["/v1/usage?start_time=0", "/v1/requests"] {
        let (status, _, v) = lumina.request(Method::GET, path, Some(&reader), None).await;
        assert_eq!(status, 200, "{path}: {v}");
    }

    // Bad controls are 400s naming the field.
    for (extra, param) in [
        (json!({"scopes": {"paths": ["turbo"]}}), "scopes.paths"),
        (json!({"scopes": {"surfaces": []}}), "scopes.surfaces"),
        (json!({"scopes": {"colour": "red"}}), ""),
        (json!({"expires_at": now_secs() - 10}), "expires_at"),
        (json!({"max_parallel_requests": 0}), "max_parallel_requests"),
    ] {
        let mut body = json!({"account_id": account, "name": "bad"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, _, v) = lumina
            .request(
                Method::POST,
                "/admin/keys",
                Some(&lumina.admin_key),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 400, "{extra}: {v}");
        if !param.is_empty() {
            assert_eq!(assert_openai_error(&v)["param"], param, "{v}");
        }
    }
    let created = payloads(&lumina.events(), "ApiKeyCreated")
        .into_iter()
        .filter(|p| p["paths"] == json!(["fast"]))
        .count();
    assert_eq!(created, 1, "the scope is part of the key's event");
}

#[tokio::test]
async fn a_key_over_max_parallel_requests_gets_429_until_one_ends() {
    let (_tmp, lumina) = start(Some(&slow_simulated(1500))).await;
    let account = lumina.account("Parallel", "5").await;
    let (_, key) = lumina
        .key_with(&account, json!({"max_parallel_requests": 2}))
        .await;
    let lumina = std::sync::Arc::new(lumina);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (lumina, key) = (lumina.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 * i)).await;
            lumina.chat(&key, &user("lumina-fast", "hello")).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, _, text) = t.await.unwrap();
        if status == 429 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                assert_openai_error(&v)["code"],
                "parallel_requests_exceeded"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // Both ended: the key may send again.
    let (status, _, text) = lumina.chat(&key, &user("lumina-fast", "hello")).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn rotation_keeps_both_keys_working_during_the_overlap_only() {
    let (_tmp, lumina) = start(None).await;
    let account = lumina.account("Rotating", "5").await;
    let (old_id, old) = lumina.key_with(&account, json!({"rpm": 100})).await;
    let rotated = lumina
        .admin(
            Method::POST,
            &format!("/admin/keys/{old_id}/rotate"),
            Some(json!({"overlap": "2s"})),
            201,
        )
        .await;
    let new = rotated["key"].as_str().unwrap().to_string();
    let new_id = rotated["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(
        rotated["rpm"], 100,
        "the new key keeps the old one's limits"
    );
    assert_eq!(rotated["replaces"]["id"], old_id.as_str());
    assert!(rotated["replaces"]["expires_at"].as_i64().unwrap() <= now_secs() + 2);
    for key in [&old, &new] {
        let (status, _, _) = lumina.chat(key, &user("lumina-fast", "hi")).await;
        assert_eq!(status, 200, "both keys work during the overlap");
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let e = refused(&lumina, &old, "lumina-fast", 401).await;
    assert_eq!(e["code"], "api_key_expired");
    let (status, _, _) = lumina.chat(&new, &user("lumina-fast", "hi")).await;
    assert_eq!(status, 200, "the new key goes on");
    let set = payloads(&lumina.events(), "ApiKeyExpirySet")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(set.len(), 1);
    assert_eq!(set[0]["key_id"], old_id.as_str());
    assert_eq!(set[0]["replaced_by"], new_id.as_str());

    // The CLI rotates too; a bad overlap is a 400.
    let data = lumina.data_dir.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = run(
        &[
            "keys",
            "rotate",
            &new_id,
            "--overlap",
            "1h",
            "--url",
            &lumina.url,
            "--data-dir",
            &data,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["replaces"]["id"], new_id.as_str());
    let expires = v["replaces"]["expires_at"].as_i64().unwrap();
    assert!((now_secs() + 3500..=now_secs() + 3600).contains(&expires));
    let (status, _, v) = lumina
        .request(
            Method::POST,
            &format!("/admin/keys/{new_id}/rotate"),
            Some(&lumina.admin_key),
            Some(r#"{"overlap": "soon"}"#),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(assert_openai_error(&v)["param"], "overlap");
    // The key rotated first has expired: it cannot be rotated again.
    let (status, _, v) = lumina
        .request(
            Method::POST,
            &format!("/admin/keys/{old_id}/rotate"),
            Some(&lumina.admin_key),
            Some("{}"),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(assert_openai_error(&v)["param"], "id");
}
