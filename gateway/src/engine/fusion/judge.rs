//! The judge of a Fusion panel: the request that asks it to compare the panel's answers as
//! structured JSON, and its verdict, validated (every member it names must be on the panel).
//! A verdict that does not validate is reported as such; Lumina's own analysis stands then.

use serde::{Deserialize, Serialize};

/// The most tokens the judge may write.
pub const JUDGE_MAX_TOKENS: u64 = 1024;

const INSTRUCTIONS: &str = "You are the judge of a panel of models that each answered the same request. Compare their answers claim by claim. Reply with one JSON object and nothing else, with exactly these members: \"consensus\" (array of strings: claims every member makes), \"contradictions\" (array of {\"claim\": string, \"sides\": [{\"position\": string, \"members\": [member names]}]}), \"partial_coverage\" (array of {\"claim\": string, \"members\": [member names]}: claims some members make and others miss), \"unique_insights\" (array of {\"claim\": string, \"member\": member name}), \"blind_spots\" (array of strings: what every member missed). Name members exactly as given.";

/// A judge's verdict on the panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Claims every member makes.
    pub consensus: Vec<String>,
    /// Claims stated differently, with who holds each side.
    pub contradictions: Vec<JudgedContradiction>,
    /// Claims some members make.
    pub partial_coverage: Vec<Covered>,
    /// Claims one member makes.
    pub unique_insights: Vec<Insight>,
    /// What every member missed.
    pub blind_spots: Vec<String>,
}

/// A contradiction as the judge sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgedContradiction {
    /// The claim.
    pub claim: String,
    /// Each position and who holds it.
    pub sides: Vec<Position>,
}

/// One side of a contradiction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// What this side says.
    pub position: String,
    /// The members that say it.
    pub members: Vec<String>,
}

/// A claim some members make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Covered {
    /// The claim.
    pub claim: String,
    /// Who makes it.
    pub members: Vec<String>,
}

/// A claim one member makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Insight {
    /// The claim.
    pub claim: String,
    /// Who makes it.
    pub member: String,
}

/// The judge's request (OpenAI chat JSON, `model` to be replaced): the conversation and each
/// member's answer under its name.
pub fn request_body(conversation: &str, members: &[&str], answers: &[&str]) -> Vec<u8> {
    let mut panel = String::new();
    for (m, a) in members.iter().zip(answers) {
        panel.push_str(&format!("<answer member=\"{m}\">\n{a}\n</answer>\n"));
    }
    let user = format!(
        "<conversation>\n{conversation}\n</conversation>\n{panel}Members: {}.",
        members.join(", ")
    );
    serde_json::to_vec(&serde_json::json!({
        "model": "judge",
        "messages": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": user},
        ],
        "max_tokens": JUDGE_MAX_TOKENS,
        "temperature": 0,
    }))
    .unwrap_or_default()
}

/// The verdict in the judge's answer `text` (optionally in a Markdown code fence), or why it
/// is not one.
pub fn verdict(text: &str, members: &[&str]) -> Result<Verdict, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    let verdict: Verdict = serde_json::from_str(t)
        .map_err(|e| format!("the judge's answer is not the verdict object: {e}"))?;
    let named = verdict
        .contradictions
        .iter()
        .flat_map(|c| c.sides.iter().flat_map(|s| &s.members))
        .chain(verdict.partial_coverage.iter().flat_map(|c| &c.members))
        .chain(verdict.unique_insights.iter().map(|i| &i.member));
    for name in named {
        if !members.contains(&name.as_str()) {
            return Err(format!(
                "the judge names '{name}', who is not on the panel ({})",
                members.join(", ")
            ));
        }
    }
    if let Some(c) = verdict.contradictions.iter().find(|c| c.sides.len() < 2) {
        return Err(format!(
            "the judge's contradiction '{}' has fewer than two sides",
            c.claim
        ));
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: [&str; 2] = ["fast", "reasoning"];

    #[test]
    fn a_well_formed_verdict_validates_even_in_a_code_fence() {
        let text = r#"```json
{"consensus":["Paris is the capital"],"contradictions":[{"claim":"height","sides":[{"position":"330 m","members":["fast"]},{"position":"324 m","members":["reasoning"]}]}],"partial_coverage":[],"unique_insights":[{"claim":"built 1889","member":"reasoning"}],"blind_spots":[]}
```"#;
        let v = verdict(text, &MEMBERS).unwrap();
        assert_eq!(v.contradictions[0].sides[1].members, ["reasoning"]);
    }

    #[test]
    fn verdicts_that_do_not_validate_say_why() {
        let no = |text: &str| verdict(text, &MEMBERS).unwrap_err();
        assert!(no("The panel mostly agrees.").contains("not the verdict object"));
        assert!(
            no(r#"{"consensus":[],"contradictions":[],"partial_coverage":[],"unique_insights":[{"claim":"x","member":"gpt"}],"blind_spots":[]}"#)
                .contains("'gpt'")
        );
        assert!(no(r#"{"consensus":[]}"#).contains("missing field"));
        assert!(
            no(r#"{"consensus":[],"contradictions":[{"claim":"x","sides":[{"position":"a","members":["fast"]}]}],"partial_coverage":[],"unique_insights":[],"blind_spots":[]}"#)
                .contains("fewer than two sides")
        );
    }

    #[test]
    fn the_request_names_every_member_and_asks_for_json() {
        let body = request_body("user: How tall?", &MEMBERS, &["330 m", "324 m"]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let user = v["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("<answer member=\"reasoning\">\n324 m"));
        assert!(
            v["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("JSON")
        );
        assert_eq!(v["max_tokens"], JUDGE_MAX_TOKENS);
    }
}
