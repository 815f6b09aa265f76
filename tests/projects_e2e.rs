//! Projects against the real binary: an account has any number of projects, created, listed,
//! renamed and archived through the admin API and `lumina projects`; a key belongs to one
//! project of its own account; `/v1/usage?group_by=project_id` splits their traffic; an
//! archived project's keys stop authenticating.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Lumina, assert_openai_error, payloads, run, user};
use reqwest::Method;
use serde_json::{Value, json};

async fn start() -> (tempfile::TempDir, Lumina) {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    (tmp, lumina)
}

/// Requests per project in `/v1/usage?group_by=project_id`, once they add up to `total`.
async fn usage_by_project(lumina: &Lumina, key: &str, total: i64) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    loop {
        let (status, _, usage) = lumina
            .request(
                Method::GET,
                &format!("/v1/usage?start_time={since}&group_by=project_id&limit=2"),
                Some(key),
                None,
            )
            .await;
        assert_eq!(status, 200, "{usage}");
        let mut per: BTreeMap<String, i64> = BTreeMap::new();
        for b in usage["data"].as_array().unwrap() {
            for r in b["results"].as_array().unwrap() {
                *per.entry(r["project_id"].as_str().unwrap().to_string())
                    .or_default() += r["num_model_requests"].as_i64().unwrap();
            }
        }
        if per.values().sum::<i64>() == total || Instant::now() > deadline {
            return per;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_projects_split_usage_and_keys_stay_inside_their_account() {
    let (_tmp, lumina) = start().await;
    let account = lumina.account("Two Teams", "10").await;
    let other = lumina.account("Someone Else", "10").await;
    let search = lumina
        .admin(
            Method::POST,
            &format!("/admin/accounts/{account}/projects"),
            Some(json!({"name": "Search"})),
            201,
        )
        .await;
    assert_eq!(search["object"], "project");
    assert_eq!(search["status"], "active");
    assert_eq!(search["account_id"], account.as_str());
    let search_id = search["id"].as_str().unwrap().to_string();
    assert!(search_id.starts_with("proj_"));
    let listed = lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}/projects"),
            None,
            200,
        )
        .await;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Default", "Search"], "{listed}");
    let default_id = listed["data"][0]["id"].as_str().unwrap().to_string();

    let (_, default_key) = lumina.key(&account).await;
    let (_, search_key) = lumina
        .key_with(&account, json!({"project_id": search_id}))
        .await;
    for (key, n) in [(&default_key, 2), (&search_key, 3)] {
        for _ in 0..n {
            let (status, _, text) = lumina.chat(key, &user("lumina-fast", "hello")).await;
            assert_eq!(status, 200, "{text}");
        }
    }
    let per = usage_by_project(&lumina, &default_key, 5).await;
    assert_eq!(
        per,
        BTreeMap::from([(default_id.clone(), 2), (search_id.clone(), 3)]),
        "usage split by project"
    );

    // A key in another account's project is refused; so is an unknown project.
    for project in [search_id.as_str(), "proj_nope"] {
        let (status, _, v) = lumina
            .request(
                Method::POST,
                "/admin/keys",
                Some(&lumina.admin_key),
                Some(&json!({"account_id": other, "name": "x", "project_id": project}).to_string()),
            )
            .await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(assert_openai_error(&v)["param"], "project_id");
    }
    // Bad names and unknown accounts are 4xx with the field named.
    let (status, _, v) = lumina
        .request(
            Method::POST,
            &format!("/admin/accounts/{account}/projects"),
            Some(&lumina.admin_key),
            Some(r#"{"name": ""}"#),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(assert_openai_error(&v)["param"], "name");
    let (status, _, v) = lumina
        .request(
            Method::POST,
            "/admin/accounts/acct_nope/projects",
            Some(&lumina.admin_key),
            Some(r#"{"name": "X"}"#),
        )
        .await;
    assert_eq!(status, 404, "{v}");

    // Rename, then archive: the project's key stops authenticating, no new key can be issued
    // in it, and the default project cannot be archived.
    let renamed = lumina
        .admin(
            Method::PATCH,
            &format!("/admin/projects/{search_id}"),
            Some(json!({"name": "Search & Ranking"})),
            200,
        )
        .await;
    assert_eq!(renamed["name"], "Search & Ranking");
    let archived = lumina
        .admin(
            Method::POST,
            &format!("/admin/projects/{search_id}/archive"),
            None,
            200,
        )
        .await;
    assert_eq!(archived["status"], "archived");
    assert!(archived["archived_at"].is_i64());
    let (status, _, text) = lumina
        .chat(&search_key, &user("lumina-fast", "hello"))
        .await;
    assert_eq!(status, 403, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(assert_openai_error(&v)["code"], "project_archived");
    let (status, _, v) = lumina
        .request(
            Method::POST,
            "/admin/keys",
            Some(&lumina.admin_key),
            Some(&json!({"account_id": account, "name": "x", "project_id": search_id}).to_string()),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(assert_openai_error(&v)["param"], "project_id");
    let (status, _, v) = lumina
        .request(
            Method::POST,
            &format!("/admin/projects/{default_id}/archive"),
            Some(&lumina.admin_key),
            None,
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, _, _) = lumina
        .chat(&default_key, &user("lumina-fast", "hello"))
        .await;
    assert_eq!(status, 200, "the default project's key still works");

    // Every change is an event of the account's stream.
    let events = lumina.events();
    let created = payloads(&events, "ProjectCreated");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["project_id"], search_id.as_str());
    assert_eq!(
        payloads(&events, "ProjectRenamed")[0]["name"],
        "Search & Ranking"
    );
    assert_eq!(payloads(&events, "ProjectArchived").len(), 1);

    // The same survives a rebuild of the read model from the log.
    let mut lumina = lumina;
    lumina.stop().await;
    let data = lumina.data_dir.to_str().unwrap().to_string();
    let (ok, _, stderr) = run(&["projector", "rebuild", "--data-dir", &data], &[]);
    assert!(ok, "{stderr}");
    lumina.restart().await;
    let listed = lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}/projects"),
            None,
            200,
        )
        .await;
    assert_eq!(listed["data"][1]["name"], "Search & Ranking", "{listed}");
    assert_eq!(listed["data"][1]["status"], "archived");
    let (status, _, _) = lumina
        .chat(&search_key, &user("lumina-fast", "hello"))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_projects_cli_creates_lists_renames_and_archives() {
    let (_tmp, lumina) = start().await;
    let account = lumina.account("CLI Teams", "1").await;
    let data = lumina.data_dir.to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--url", lumina.url.as_str(), "--data-dir", &data]);
        let (ok, stdout, stderr) = run(&all, &[]);
        assert!(ok, "{args:?}: {stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let created = cli(&["projects", "create", "--account", &account, "--name", "Ops"]);
    let id = created["id"].as_str().unwrap();
    let renamed = cli(&["projects", "rename", id, "--name", "Platform"]);
    assert_eq!(renamed["name"], "Platform");
    let key = cli(&[
        "keys",
        "create",
        "--account",
        &account,
        "--name",
        "ops",
        "--project",
        id,
        "--no-fusion",
    ]);
    assert_eq!(key["project_id"], id);
    assert_eq!(key["allow_fusion"], false);
    let archived = cli(&["projects", "archive", id]);
    assert_eq!(archived["status"], "archived");
    let listed = cli(&["projects", "list", "--account", &account]);
    let rows: Vec<(&str, &str)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [("Default", "active"), ("Platform", "archived")]);
}
