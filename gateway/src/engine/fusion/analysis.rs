//! Lumina's own comparison of a Fusion panel's answers: deterministic, no upstream call, so it
//! works whatever the panel runs on. Each answer is split into claims (sentences and list
//! items), each claim normalised into content words, numbers and names; claims are matched
//! across members by the overlap of their words; matched claims that state different numbers
//! or different names are contradictions, each side naming the members that hold it. The
//! agreement score is the mean, over matched claims, of the share of the other members that
//! hold a claim (0 when it is contradicted).

use std::collections::BTreeSet;

use serde::Serialize;

/// Words two claims must share (Jaccard overlap of words and names) to be the same claim.
const MATCH: f64 = 0.5;
/// Longest claim text reported, in characters.
const CLAIM_CHARS: usize = 300;
/// Most claims taken from one answer.
const CLAIMS_PER_ANSWER: usize = 200;

const STOPWORDS: &[&str] = &[
    "a", "about", "also", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "i",
    "in", "into", "is", "it", "its", "just", "may", "me", "might", "more", "most", "my", "no",
    "not", "of", "on", "only", "or", "our", "over", "she", "should", "so", "such", "than", "that",
    "the", "their", "them", "then", "there", "these", "they", "this", "those", "to", "under",
    "very", "was", "we", "were", "which", "who", "will", "with", "would", "you", "your",
];

/// The comparison of a panel's answers.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// How it was made.
    pub method: &'static str,
    /// Distinct claims found across the answers.
    pub claims: usize,
    /// Claims every answering member makes, without contradiction.
    pub consensus: Vec<Shared>,
    /// Claims the members state differently.
    pub contradictions: Vec<Contradiction>,
    /// Claims some members (more than one, not all) make.
    pub partial_coverage: Vec<Shared>,
    /// Claims only one member makes.
    pub unique_insights: Vec<Unique>,
    /// 0 (no claim shared) to 1 (every claim made by every member, none contradicted).
    pub agreement: f64,
}

/// A claim several members make.
#[derive(Debug, Clone, Serialize)]
pub struct Shared {
    /// The claim, as its first member put it.
    pub claim: String,
    /// The members that make it.
    pub members: Vec<String>,
}

/// A claim one member makes.
#[derive(Debug, Clone, Serialize)]
pub struct Unique {
    /// The claim.
    pub claim: String,
    /// The member.
    pub member: String,
}

/// A claim the members state differently.
#[derive(Debug, Clone, Serialize)]
pub struct Contradiction {
    /// The claim, as its first member put it.
    pub claim: String,
    /// `number` or `name`: what differs.
    pub kind: &'static str,
    /// Each position and who holds it.
    pub sides: Vec<Side>,
}

/// One position in a contradiction.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// The numbers or names this side states.
    pub value: String,
    /// The members that hold it.
    pub members: Vec<String>,
    /// The claim as the first of them put it.
    pub text: String,
}

impl Contradiction {
    /// One line: `claim: 330 (fast, reasoning) vs 324 (balanced)`.
    pub fn summary(&self) -> String {
        let sides: Vec<String> = self
            .sides
            .iter()
            .map(|s| format!("{} ({})", s.value, s.members.join(", ")))
            .collect();
        format!("{}: {}", self.claim, sides.join(" vs "))
    }
}

/// One claim of one member, normalised.
struct Claim {
    member: usize,
    text: String,
    words: BTreeSet<String>,
    numbers: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Claim {
    /// Words and names, the part of a claim that says what it is about.
    fn similarity(&self, other: &Claim) -> f64 {
        let a = self.words.iter().chain(&self.names);
        let b: BTreeSet<&String> = other.words.iter().chain(&other.names).collect();
        let a: BTreeSet<&String> = a.collect();
        let union = a.union(&b).count();
        if union == 0 {
            return 0.0;
        }
        a.intersection(&b).count() as f64 / union as f64
    }
}

/// The number a token states, normalised (`1,000.50` → `1000.5`), if it is one.
fn number(token: &str) -> Option<String> {
    let t = token.trim_end_matches(['%', '.', ',', ';', ':', ')']);
    let t = t.trim_start_matches(['(', '$', '€', '£']);
    let digits_end = t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == ',' || *c == '.' || *c == '-'))
        .map_or(t.len(), |(i, _)| i);
    let n = &t[..digits_end];
    if !n.chars().any(|c| c.is_ascii_digit()) || n.starts_with(',') {
        return None;
    }
    let mut n: String = n.chars().filter(|c| *c != ',').collect();
    if n.contains('.') {
        while n.ends_with('0') {
            n.pop();
        }
        if n.ends_with('.') {
            n.pop();
        }
    }
    (!n.is_empty() && n != "-").then_some(n)
}

/// Splits a line into sentences at `.`, `!` or `?` followed by whitespace.
fn sentences(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ends = matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
        if ends {
            out.push(&line[start..=i]);
            start = i + 1;
        }
    }
    out.push(&line[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// A line without its list marker or heading marks.
fn strip_marker(line: &str) -> &str {
    let line = line.trim().trim_start_matches('#').trim_start();
    for marker in ["- ", "* ", "• ", "+ "] {
        if let Some(rest) = line.strip_prefix(marker) {
            return rest;
        }
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0
        && let Some(rest) = line[digits..]
            .strip_prefix(". ")
            .or_else(|| line[digits..].strip_prefix(") "))
    {
        return rest;
    }
    line
}

fn claim(member: usize, sentence: &str) -> Option<Claim> {
    let mut words = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, raw) in sentence.split_whitespace().enumerate() {
        if let Some(n) = number(raw) {
            numbers.insert(n);
            continue;
        }
        let word: String = raw
            .trim_matches(|c: char| !c.is_alphanumeric())
            .replace("**", "");
        if word.is_empty() {
            continue;
        }
        let lower = word.to_lowercase();
        if STOPWORDS.contains(&lower.as_str()) {
            continue;
        }
        if i > 0 && word.chars().next().is_some_and(char::is_uppercase) {
            names.insert(lower);
        } else {
            words.insert(lower);
        }
    }
    if words.len() + names.len() + numbers.len() < 2 {
        return None;
    }
    let text: String = sentence.chars().take(CLAIM_CHARS).collect();
    Some(Claim {
        member,
        text,
        words,
        numbers,
        names,
    })
}

/// The claims of one answer.
fn claims(member: usize, answer: &str) -> Vec<Claim> {
    answer
        .lines()
        .map(strip_marker)
        .flat_map(sentences)
        .filter_map(|s| claim(member, s))
        .take(CLAIMS_PER_ANSWER)
        .collect()
}

/// Groups the claims of `cluster` by what `key` gives each beyond what all share, when every
/// claim states something of its own there and they do not all state the same.
fn sides(
    cluster: &[&Claim],
    members: &[&str],
    key: impl Fn(&Claim) -> &BTreeSet<String>,
) -> Option<Vec<Side>> {
    let first = key(cluster.first()?);
    let common: BTreeSet<&String> = first
        .iter()
        .filter(|v| cluster.iter().all(|c| key(c).contains(*v)))
        .collect();
    let mut sides: Vec<(Vec<&String>, Side)> = Vec::new();
    for c in cluster {
        let own: Vec<&String> = key(c).iter().filter(|v| !common.contains(v)).collect();
        if own.is_empty() {
            return None;
        }
        match sides.iter_mut().find(|(v, _)| *v == own) {
            Some((_, side)) => side.members.push(members[c.member].to_string()),
            None => {
                let value = own
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                sides.push((
                    own,
                    Side {
                        value,
                        members: vec![members[c.member].to_string()],
                        text: c.text.clone(),
                    },
                ));
            }
        }
    }
    (sides.len() > 1).then(|| sides.into_iter().map(|(_, s)| s).collect())
}

/// Compares the `answers` of the members named `members` (same order).
pub fn analyse(members: &[&str], answers: &[&str]) -> Analysis {
    let mut clusters: Vec<Vec<Claim>> = Vec::new();
    for (m, answer) in answers.iter().enumerate() {
        for c in claims(m, answer) {
            let best = clusters
                .iter()
                .enumerate()
                .filter(|(_, cl)| cl.iter().all(|x| x.member != m))
                .map(|(i, cl)| (i, cl[0].similarity(&c)))
                .filter(|(_, s)| *s >= MATCH)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => clusters[i].push(c),
                None => clusters.push(vec![c]),
            }
        }
    }
    let n = answers.len();
    let mut analysis = Analysis {
        method: "lumina-claims-v1",
        claims: clusters.len(),
        consensus: Vec::new(),
        contradictions: Vec::new(),
        partial_coverage: Vec::new(),
        unique_insights: Vec::new(),
        agreement: 0.0,
    };
    let mut score = 0.0;
    for cluster in &clusters {
        let refs: Vec<&Claim> = cluster.iter().collect();
        let claim = cluster[0].text.clone();
        let contradiction = sides(&refs, members, |c| &c.numbers)
            .map(|s| ("number", s))
            .or_else(|| sides(&refs, members, |c| &c.names).map(|s| ("name", s)));
        if let Some((kind, sides)) = contradiction {
            analysis
                .contradictions
                .push(Contradiction { claim, kind, sides });
            continue;
        }
        let holders: Vec<String> = cluster
            .iter()
            .map(|c| members[c.member].to_string())
            .collect();
        if n > 1 {
            score += (holders.len() - 1) as f64 / (n - 1) as f64;
        }
        match holders.len() {
            1 if n > 1 => analysis.unique_insights.push(Unique {
                claim,
                member: holders[0].clone(),
            }),
            k if k == n => analysis.consensus.push(Shared {
                claim,
                members: holders,
            }),
            _ => analysis.partial_coverage.push(Shared {
                claim,
                members: holders,
            }),
        }
    }
    analysis.agreement = match (n, clusters.len()) {
        (0, _) | (_, 0) => 0.0,
        (1, _) => 1.0,
        (_, c) => ((score / c as f64) * 1000.0).round() / 1000.0,
    };
    analysis
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: [&str; 3] = ["fast", "balanced", "reasoning"];

    #[test]
    fn a_number_one_member_states_differently_is_a_contradiction_naming_both_sides() {
        let a = analyse(
            &MEMBERS,
            &[
                "The Eiffel Tower is 330 metres tall. It was completed in 1889.",
                "The Eiffel Tower is 324 metres tall. It was completed in 1889.",
                "- The Eiffel Tower is 330 metres tall.\n- It was completed in 1889.",
            ],
        );
        assert_eq!(a.contradictions.len(), 1, "{a:?}");
        let c = &a.contradictions[0];
        assert_eq!(c.kind, "number");
        let side = |v: &str| c.sides.iter().find(|s| s.value == v).unwrap();
        assert_eq!(side("330").members, ["fast", "reasoning"]);
        assert_eq!(side("324").members, ["balanced"]);
        assert_eq!(a.consensus.len(), 1);
        assert_eq!(a.consensus[0].members, MEMBERS);
        // One claim shared by all, one contradicted: (1 + 0) / 2.
        assert_eq!(a.agreement, 0.5);
    }

    #[test]
    fn different_names_for_the_same_claim_are_a_contradiction() {
        let a = analyse(
            &MEMBERS[..2],
            &[
                "The capital of Australia is Canberra.",
                "The capital of Australia is Sydney.",
            ],
        );
        assert_eq!(a.contradictions.len(), 1, "{a:?}");
        assert_eq!(a.contradictions[0].kind, "name");
        assert!(
            a.contradictions[0]
                .summary()
                .contains("canberra (fast) vs sydney (balanced)"),
            "{}",
            a.contradictions[0].summary()
        );
    }

    #[test]
    fn identical_answers_agree_fully_and_distinct_ones_are_unique_insights() {
        let same = "Rust has no garbage collector. Ownership frees memory deterministically.";
        let a = analyse(&MEMBERS, &[same, same, same]);
        assert_eq!(a.agreement, 1.0);
        assert!(a.contradictions.is_empty());
        assert_eq!(a.consensus.len(), 2);

        let a = analyse(
            &MEMBERS[..2],
            &[
                "Rust has no garbage collector.",
                "Python programs run on an interpreter.",
            ],
        );
        assert_eq!(a.agreement, 0.0);
        assert_eq!(a.unique_insights.len(), 2);
        assert_eq!(a.unique_insights[1].member, "balanced");
    }

    #[test]
    fn numbers_are_normalised_and_decimals_do_not_split_sentences() {
        assert_eq!(number("1,000.50").as_deref(), Some("1000.5"));
        assert_eq!(number("42%.").as_deref(), Some("42"));
        assert_eq!(number("$3.0").as_deref(), Some("3"));
        assert_eq!(number("word"), None);
        assert_eq!(
            sentences("Pi is 3.14 roughly. Next one"),
            ["Pi is 3.14 roughly.", "Next one"]
        );
        let a = analyse(
            &MEMBERS[..2],
            &["The rate is 3.50 percent.", "The rate is 3.5 percent."],
        );
        assert!(a.contradictions.is_empty(), "{a:?}");
        assert_eq!(a.agreement, 1.0);
    }
}
