//! One fully populated sample event per type, for tests, fixtures and benchmarks across crates.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::events::{Envelope, Event, EventType};
use crate::payloads::*;

/// A sample event of `event_type` with every optional field set, deterministic for `seed`.
pub fn sample(event_type: EventType, seed: u64) -> Event {
    let envelope = Envelope {
        event_id: Uuid::from_u64_pair(0x0193_0000_0000_7000 | (seed >> 48), seed | (1 << 63)),
        occurred_at: 1_764_000_000_000_000 + i64::try_from(seed % 1_000_000).unwrap_or(0),
        request_id: Some(format!("req_{seed:032x}")),
        account_id: format!("acct_{:032x}", seed % 7),
        project_id: Some(format!("proj_{:032x}", seed % 7)),
        api_key_id: Some(format!("key_{:032x}", seed % 3)),
        gateway_instance: "gw-sample".into(),
        trace_id: Some(format!("{seed:032x}")),
    };
    let n = i64::try_from(seed % 10_000).unwrap_or(0);
    let payload: crate::Payload = match event_type {
        EventType::AccountOpened => AccountOpened {
            name: format!("Account {seed}"),
            default_project_id: format!("proj_{:032x}", seed % 7),
            default_project_name: "Default".into(),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::ProjectCreated => ProjectCreated {
            project_id: format!("proj_{seed:032x}"),
            name: format!("Project {seed}"),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::ProjectRenamed => ProjectRenamed {
            project_id: format!("proj_{seed:032x}"),
            name: format!("Renamed {seed}"),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::ProjectArchived => ProjectArchived {
            project_id: format!("proj_{seed:032x}"),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::CreditsGranted => CreditsGranted {
            amount_nano: 1_000_000_000 + n,
            reason: Some("top-up".into()),
            granted_by: "admin".into(),
        }
        .into(),
        EventType::ApiKeyCreated => ApiKeyCreated {
            key_id: format!("key_{seed:032x}"),
            name: "ci".into(),
            key_hash: format!("{seed:064x}"),
            key_prefix: "lum_abcdef12".into(),
            store_content: seed.is_multiple_of(2),
            rpm: Some(60 + n),
            tpm: Some(100_000),
            routing_prefer: Some("cost".into()),
            fusion_barred: seed.is_multiple_of(3),
            expires_at: Some(1_800_000_000_000_000 + n),
            paths: Some(vec!["fast".into(), "balanced".into()]),
            surfaces: Some(vec!["chat_completions".into()]),
            read_only: seed.is_multiple_of(5),
            max_parallel_requests: Some(4),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::ApiKeyExpirySet => ApiKeyExpirySet {
            key_id: format!("key_{seed:032x}"),
            expires_at: 1_800_000_000_000_000 + n,
            replaced_by: Some(format!("key_{:032x}", seed + 1)),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::AdminKeyCreated => AdminKeyCreated {
            key_id: format!("adm_{seed:032x}"),
            name: format!("operator {seed}"),
            role: "operator".into(),
            key_hash: format!("{seed:064x}"),
            key_prefix: "lum_adm_abcd".into(),
            admin_key_id: Some("adm_bootstrap".into()),
        }
        .into(),
        EventType::AdminKeyRevoked => AdminKeyRevoked {
            key_id: format!("adm_{seed:032x}"),
            admin_key_id: Some("adm_bootstrap".into()),
        }
        .into(),
        EventType::BudgetSet => BudgetSet {
            budget_id: format!("bud_{seed:032x}"),
            scope: "key".into(),
            scope_id: format!("key_{seed:032x}"),
            limit_nano: 10_000_000_000 + n,
            period: "month".into(),
            timezone: "Europe/Paris".into(),
            soft_limit_nano: Some(8_000_000_000),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::BudgetRemoved => BudgetRemoved {
            budget_id: format!("bud_{seed:032x}"),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::BudgetThresholdCrossed => BudgetThresholdCrossed {
            budget_id: format!("bud_{seed:032x}"),
            period_start: 1_800_000_000_000_000 + n,
            soft_limit_nano: 8_000_000_000,
            limit_nano: 10_000_000_000,
            used_nano: 8_000_000_001 + n,
        }
        .into(),
        EventType::ApiKeyRevoked => ApiKeyRevoked {
            key_id: format!("key_{seed:032x}"),
            reason: Some("leaked".into()),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::LimitsChanged => LimitsChanged {
            key_id: format!("key_{seed:032x}"),
            rpm: Some(10),
            tpm: None,
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::PolicyPublished => PolicyPublished {
            policy_version: 3 + n,
            snapshot_json: r#"{"paths":{"fast":["sim-fast"]}}"#.into(),
            reason: "stats".into(),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::PolicyActivated => PolicyActivated {
            policy_version: 2 + n,
            reason: "rollback".into(),
            admin_key_id: Some(format!("adm_{:032x}", seed % 5)),
        }
        .into(),
        EventType::RequestRouted => RequestRouted {
            requested_model: "lumina-auto".into(),
            path: "balanced".into(),
            task_class: "code".into(),
            stream: true,
            policy_version: 1,
            features: BTreeMap::from([("code".into(), 1.0), ("tokens".into(), 412.0)]),
            scores: BTreeMap::from([("fast".into(), 0.25), ("balanced".into(), 0.5)]),
            candidates: vec!["sim-balanced".into(), "sim-fast".into()],
            prompt_tokens_estimate: 412,
            max_tokens: Some(1024),
            hold: Some(CreditHold {
                amount_nano: 4_000_000 + n,
                price_table_version: "default-1".into(),
                ttl_ms: 600_000,
            }),
            top_features: vec![
                FeatureContribution {
                    name: "word:refactor".into(),
                    value: 0.125,
                    contribution: 0.5,
                },
                FeatureContribution {
                    name: "tokens".into(),
                    value: 0.72,
                    contribution: -0.25,
                },
            ],
            prefer: "quality".into(),
            min_path: Some("balanced".into()),
            max_path: None,
            classified_path: Some("fast".into()),
            api: "messages".into(),
        }
        .into(),
        EventType::UpstreamAttempted => UpstreamAttempted {
            attempt: 2,
            provider: "openai".into(),
            deployment: "oai-mini".into(),
            upstream_model: "gpt-4o-mini".into(),
            started_at: 1_764_000_000_000_000 + n,
            ttfb_us: Some(120_000),
            duration_us: 800_000,
            outcome: "error".into(),
            error_class: Some("timeout".into()),
            http_status: Some(504),
            fell_back: true,
            role: Some("panel".into()),
        }
        .into(),
        EventType::RequestSettled => RequestSettled {
            outcome: "completed".into(),
            path: "fast".into(),
            provider: Some("simulated".into()),
            deployment: Some("sim-fast".into()),
            usage: Usage {
                prompt_tokens: 100 + n,
                completion_tokens: 300,
                cached_tokens: 20,
                reasoning_tokens: 5,
                estimated: false,
            },
            charge_nano: 1_234_567 + n,
            price_table_version: "default-1".into(),
            rounding: "half_up_nano".into(),
            hold_released_nano: 4_000_000,
            latency_us: 812_000,
            ttft_us: Some(95_000),
            attempts: 1,
            error_class: Some("none".into()),
            usage_anomaly: Some("completion_clamped".into()),
            reported_completion_tokens: Some(1_000_000 + n),
        }
        .into(),
        EventType::FeedbackReceived => FeedbackReceived {
            score: Some(0.5),
            label: Some("helpful".into()),
            comment: Some("good".into()),
            source: "api".into(),
        }
        .into(),
        EventType::HoldExpired => HoldExpired {
            amount_nano: 4_000_000 + n,
            hold_placed_at: 1_764_000_000_000_000,
            ttl_ms: 600_000,
        }
        .into(),
        EventType::FusionPanelCompleted => FusionPanelCompleted {
            panelists: vec![Panelist {
                path: "reasoning".into(),
                deployment: "sim-reasoning".into(),
                outcome: "completed".into(),
                charge_nano: 10 + n,
                completion_tokens: 700,
                latency_us: 2_000_000,
            }],
            synthesizer_deployment: "sim-balanced".into(),
            agreement: 0.75,
            disagreements: vec!["the second claim".into()],
        }
        .into(),
        EventType::RequestContentRecorded => RequestContentRecorded {
            messages_json: format!(r#"[{{"role":"user","content":"question {n}"}}]"#),
            answer: Some("an answer".into()),
            tool_calls_json: None,
        }
        .into(),
        EventType::EvalCompleted => EvalCompleted {
            run_id: format!("run_{seed:032x}"),
            dataset: "smoke".into(),
            item_id: format!("item-{n}"),
            model: "lumina-auto".into(),
            path: "balanced".into(),
            deployment: Some("sim-balanced".into()),
            task_class: Some("arithmetic".into()),
            routed_task_class: Some("math".into()),
            check_kind: "judge".into(),
            score: 0.75,
            passed: true,
            cost_nano: 1_234_567 + n,
            latency_ms: 812.5,
            judge_request_id: Some(format!("req_{:032x}", seed + 1)),
            judge_cost_nano: Some(98_765),
        }
        .into(),
    };
    Event::new(envelope, payload)
}
