//! Admin keys with roles against the real binary: the bootstrap key is the first owner and
//! issues keys of each role; each role is allowed exactly its share of the admin API (403
//! `admin_role_forbidden` otherwise); a revoked admin key fails at once; customer keys never
//! pass; every admin write's event names the admin key that made it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Lumina, assert_openai_error, run};
use reqwest::Method;
use serde_json::{Value, json};

async fn start() -> (tempfile::TempDir, Lumina) {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    (tmp, lumina)
}

/// Issues an admin key of `role` with the bootstrap key; returns (id, key).
async fn admin_key(lumina: &Lumina, role: &str) -> (String, String) {
    let v = lumina
        .admin(
            Method::POST,
            "/admin/admin-keys",
            Some(json!({"name": format!("{role} key"), "role": role})),
            201,
        )
        .await;
    assert_eq!(v["role"], role, "{v}");
    assert_eq!(v["created_by"], "adm_bootstrap", "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// A request with `key`: its status and body.
async fn call(
    lumina: &Lumina,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, _, v) = lumina
        .request(method, path, Some(key), body.as_deref())
        .await;
    (status, v)
}

fn forbidden(status: u16, v: &Value) {
    assert_eq!(status, 403, "{v}");
    assert_eq!(
        assert_openai_error(v)["code"],
        "admin_role_forbidden",
        "{v}"
    );
}

#[tokio::test]
async fn each_role_gets_its_share_of_the_admin_api_and_every_write_names_its_key() {
    let (_tmp, lumina) = start().await;
    let (finance_id, finance) = admin_key(&lumina, "finance").await;
    let (_, viewer) = admin_key(&lumina, "viewer").await;
    let (operator_id, operator) = admin_key(&lumina, "operator").await;
    let account = lumina.account("Roles", "5").await;
    let statements = format!("/admin/ledger/statements?account_id={account}&format=json");
    let new_key = json!({"account_id": account, "name": "k"});

    // finance: reads statements, the ledger and usage; changes nothing.
    let (status, v) = call(&lumina, &finance, Method::GET, &statements, None).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = call(
        &lumina,
        &finance,
        Method::GET,
        &format!("/admin/ledger/accounts/{account}/entries"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &lumina,
        &finance,
        Method::GET,
        &format!("/admin/accounts/{account}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, v) = call(
        &lumina,
        &finance,
        Method::POST,
        "/admin/keys",
        Some(new_key.clone()),
    )
    .await;
    forbidden(status, &v);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("finance"),
        "{v}"
    );
    let (status, v) = call(
        &lumina,
        &finance,
        Method::POST,
        &format!("/admin/accounts/{account}/credits"),
        Some(json!({"amount": 1})),
    )
    .await;
    forbidden(status, &v);

    // viewer: reads, but not the ledger.
    let (status, _) = call(
        &lumina,
        &viewer,
        Method::GET,
        &format!("/admin/keys?account_id={account}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, v) = call(&lumina, &viewer, Method::GET, &statements, None).await;
    forbidden(status, &v);
    let (status, v) = call(
        &lumina,
        &viewer,
        Method::POST,
        "/admin/accounts",
        Some(json!({"name": "x"})),
    )
    .await;
    forbidden(status, &v);

    // operator: accounts, keys, credits, budgets, policies; not admin keys.
    let (status, v) = call(
        &lumina,
        &operator,
        Method::POST,
        "/admin/admin-keys",
        Some(json!({"name": "o2", "role": "owner"})),
    )
    .await;
    forbidden(status, &v);
    let (status, v) = call(&lumina, &operator, Method::GET, "/admin/admin-keys", None).await;
    forbidden(status, &v);

    // Every write the operator makes names it.
    let (status, v) = call(
        &lumina,
        &operator,
        Method::POST,
        "/admin/accounts",
        Some(json!({"name": "Made by operator", "credits": 2})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let op_account = v["id"].as_str().unwrap().to_string();
    let writes = [
        (
            Method::POST,
            format!("/admin/accounts/{op_account}/credits"),
            Some(json!({"amount": 1})),
        ),
        (
            Method::POST,
            format!("/admin/accounts/{op_account}/projects"),
            Some(json!({"name": "P"})),
        ),
        (
            Method::POST,
            "/admin/keys".to_string(),
            Some(json!({"account_id": op_account, "name": "k"})),
        ),
        (
            Method::POST,
            format!("/admin/accounts/{op_account}/budgets"),
            Some(json!({"limit": 1, "period": "day"})),
        ),
    ];
    let mut created = Vec::new();
    for (method, path, body) in writes {
        let (status, v) = call(&lumina, &operator, method, &path, body).await;
        assert_eq!(status, 201, "{path}: {v}");
        created.push(v);
    }
    let key_id = created[2]["id"].as_str().unwrap().to_string();
    let budget_id = created[3]["id"].as_str().unwrap().to_string();
    let project_id = created[1]["id"].as_str().unwrap().to_string();
    for (method, path, body) in [
        (
            Method::POST,
            format!("/admin/keys/{key_id}/limits"),
            Some(json!({"rpm": 10, "tpm": null})),
        ),
        (
            Method::PATCH,
            format!("/admin/projects/{project_id}"),
            Some(json!({"name": "Renamed"})),
        ),
        (Method::DELETE, format!("/admin/budgets/{budget_id}"), None),
        (Method::DELETE, format!("/admin/keys/{key_id}"), None),
    ] {
        let (status, v) = call(&lumina, &operator, method, &path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    let events = lumina.events();
    let of_operator: Vec<&Value> = events
        .iter()
        .filter(|e| e["account_id"] == op_account.as_str())
        .collect();
    let types: Vec<&str> = of_operator
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for t in [
        "AccountOpened",
        "CreditsGranted",
        "ProjectCreated",
        "ApiKeyCreated",
        "BudgetSet",
        "LimitsChanged",
        "ProjectRenamed",
        "BudgetRemoved",
        "ApiKeyRevoked",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    for e in &of_operator {
        let p = &e["payload"];
        let by = if e["event_type"] == "CreditsGranted" {
            &p["granted_by"]
        } else {
            &p["admin_key_id"]
        };
        assert_eq!(by, operator_id.as_str(), "{e}");
    }
    // The bootstrap key's writes name it; the admin keys' events name who issued them.
    let bootstrap_opened = events
        .iter()
        .find(|e| e["event_type"] == "AccountOpened" && e["account_id"] == account.as_str())
        .unwrap();
    assert_eq!(bootstrap_opened["payload"]["admin_key_id"], "adm_bootstrap");
    let issued: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "AdminKeyCreated")
        .collect();
    assert_eq!(issued.len(), 3);
    assert!(
        issued
            .iter()
            .all(|e| e["payload"]["admin_key_id"] == "adm_bootstrap")
    );
    assert!(issued.iter().all(|e| e["payload"].get("key").is_none()));
    assert!(
        issued
            .iter()
            .any(|e| e["payload"]["key_id"] == finance_id.as_str())
    );

    // A revoked admin key fails at once; customer keys never pass the admin API.
    lumina
        .admin(
            Method::DELETE,
            &format!("/admin/admin-keys/{operator_id}"),
            None,
            200,
        )
        .await;
    let (status, v) = call(
        &lumina,
        &operator,
        Method::GET,
        &format!("/admin/accounts/{account}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "admin_key_revoked");
    let events = lumina.events();
    let revoked: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "AdminKeyRevoked")
        .collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["payload"]["key_id"], operator_id.as_str());
    assert_eq!(revoked[0]["payload"]["admin_key_id"], "adm_bootstrap");
    let (_, customer) = lumina.key(&account).await;
    let (status, v) = call(
        &lumina,
        &customer,
        Method::GET,
        &format!("/admin/accounts/{account}"),
        None,
    )
    .await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "admin_key_required");
    let (status, _) = call(
        &lumina,
        &finance,
        Method::POST,
        "/v1/chat/completions",
        Some(json!({"model": "lumina-fast", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, 401, "admin keys are not customer keys");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_admin_answers_are_not_cached() {
    let (_tmp, lumina) = start().await;
    let account = lumina.account("Headers", "1").await;
    let (_, customer) = lumina.key(&account).await;
    let admin_key = lumina.admin_key.clone();
    for (path, key) in [
        (format!("/admin/accounts/{account}"), admin_key.as_str()),
        ("/v1/models".to_string(), customer.as_str()),
        ("/admin/nowhere".to_string(), customer.as_str()),
        ("/healthz".to_string(), ""),
    ] {
        let (_, headers, _) = lumina.request(Method::GET, &path, Some(key), None).await;
        assert_eq!(
            common::header(&headers, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        assert_eq!(
            common::header(&headers, "x-frame-options"),
            "DENY",
            "{path}"
        );
        assert_eq!(
            common::header(&headers, "referrer-policy"),
            "no-referrer",
            "{path}"
        );
        let cache = common::header(&headers, "cache-control");
        assert_eq!(
            cache == "no-store",
            path.starts_with("/admin/"),
            "{path}: {cache}"
        );
    }
}

#[tokio::test]
async fn admin_keys_are_issued_listed_and_revoked_through_the_cli() {
    let (_tmp, lumina) = start().await;
    let env = [
        ("LUMINA_URL", lumina.url.as_str()),
        ("LUMINA_ADMIN_KEY", lumina.admin_key.as_str()),
    ];
    let cli = |args: &[&str], env: &[(&str, &str)]| -> (bool, Value, String) {
        let (ok, stdout, stderr) = run(args, env);
        (
            ok,
            serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr,
        )
    };
    let (ok, owner, stderr) = cli(
        &[
            "admin-keys",
            "create",
            "--name",
            "second owner",
            "--role",
            "owner",
        ],
        &env,
    );
    assert!(ok, "{stderr}");
    let owner_key = owner["key"].as_str().unwrap().to_string();
    assert!(owner_key.starts_with("lum_admin_"), "{owner}");
    // The new owner issues a finance key; it appears in the list without its key.
    let as_owner = [
        ("LUMINA_URL", lumina.url.as_str()),
        ("LUMINA_ADMIN_KEY", owner_key.as_str()),
    ];
    let (ok, finance, stderr) = cli(
        &[
            "admin-keys",
            "create",
            "--name",
            "books",
            "--role",
            "finance",
        ],
        &as_owner,
    );
    assert!(ok, "{stderr}");
    assert_eq!(finance["created_by"], owner["id"]);
    let (ok, list, _) = cli(&["admin-keys", "list"], &env);
    assert!(ok);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(
        data.iter()
            .all(|k| k.get("key").is_none() && k["status"] == "active")
    );
    // A finance key cannot issue keys.
    let as_finance = [
        ("LUMINA_URL", lumina.url.as_str()),
        ("LUMINA_ADMIN_KEY", finance["key"].as_str().unwrap()),
    ];
    let (ok, _, stderr) = cli(
        &["admin-keys", "create", "--name", "x", "--role", "viewer"],
        &as_finance,
    );
    assert!(!ok);
    assert!(
        stderr.contains("admin_role_forbidden") || stderr.contains("403"),
        "{stderr}"
    );
    let (ok, revoked, stderr) = cli(
        &["admin-keys", "revoke", finance["id"].as_str().unwrap()],
        &as_owner,
    );
    assert!(ok, "{stderr}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], owner["id"]);
    // An unknown role is a 400 naming it.
    let v = lumina
        .admin(
            Method::POST,
            "/admin/admin-keys",
            Some(json!({"name": "x", "role": "root"})),
            400,
        )
        .await;
    assert_eq!(v["error"]["param"], "role");
}
