//! The model catalog: Lumina's virtual models, each naming a route path, and their aliases.

use serde::Serialize;

/// The paths a request can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutePath {
    /// Cheap and quick.
    Fast,
    /// The default trade-off.
    Balanced,
    /// Slow, careful, for hard problems.
    Reasoning,
    /// A panel of routes fused into one answer.
    Fusion,
    /// Embedding vectors (`/v1/embeddings`), never a chat path.
    Embeddings,
}

impl RoutePath {
    /// The path's name as recorded in events.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutePath::Fast => "fast",
            RoutePath::Balanced => "balanced",
            RoutePath::Reasoning => "reasoning",
            RoutePath::Fusion => "fusion",
            RoutePath::Embeddings => "embeddings",
        }
    }

    /// Any path by name: the three classifier paths, `fusion` or `embeddings`.
    pub fn parse(name: &str) -> Option<RoutePath> {
        match name {
            "fusion" => Some(RoutePath::Fusion),
            "embeddings" => Some(RoutePath::Embeddings),
            tier => RoutePath::parse_tier(tier),
        }
    }

    /// One of the three classifier paths by name (`fast`, `balanced`, `reasoning`).
    pub fn parse_tier(name: &str) -> Option<RoutePath> {
        match name {
            "fast" => Some(RoutePath::Fast),
            "balanced" => Some(RoutePath::Balanced),
            "reasoning" => Some(RoutePath::Reasoning),
            _ => None,
        }
    }

    /// Strength order of the classifier paths: fast 0, balanced 1, reasoning (and fusion) 2;
    /// embeddings, outside that order, 0.
    pub fn rank(self) -> u8 {
        match self {
            RoutePath::Fast | RoutePath::Embeddings => 0,
            RoutePath::Balanced => 1,
            RoutePath::Reasoning | RoutePath::Fusion => 2,
        }
    }

    /// `self` raised to at least `min` and lowered to at most `max` (fusion and embeddings are
    /// left alone).
    pub fn clamp_tier(self, min: Option<RoutePath>, max: Option<RoutePath>) -> RoutePath {
        if matches!(self, RoutePath::Fusion | RoutePath::Embeddings) {
            return self;
        }
        let mut path = self;
        if let Some(min) = min
            && path.rank() < min.rank()
        {
            path = min;
        }
        if let Some(max) = max
            && path.rank() > max.rank()
        {
            path = max;
        }
        path
    }
}

/// What a model id asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelChoice {
    /// Let the classifier pick the path.
    Auto,
    /// A fixed path.
    Path(RoutePath),
}

/// One listed model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The id clients send as `model`.
    pub id: &'static str,
    /// What it routes to.
    pub choice: ModelChoice,
    /// The canonical id when this one is an alias.
    pub alias_of: Option<&'static str>,
}

/// Unix time the catalog's models are reported as created (their first release).
pub const CATALOG_CREATED: i64 = 1_748_736_000;

const ENTRIES: &[CatalogEntry] = &[
    CatalogEntry {
        id: "lumina-auto",
        choice: ModelChoice::Auto,
        alias_of: None,
    },
    CatalogEntry {
        id: "lumina-fast",
        choice: ModelChoice::Path(RoutePath::Fast),
        alias_of: None,
    },
    CatalogEntry {
        id: "lumina-balanced",
        choice: ModelChoice::Path(RoutePath::Balanced),
        alias_of: None,
    },
    CatalogEntry {
        id: "lumina-reasoning",
        choice: ModelChoice::Path(RoutePath::Reasoning),
        alias_of: None,
    },
    CatalogEntry {
        id: "lumina-thinking",
        choice: ModelChoice::Path(RoutePath::Reasoning),
        alias_of: Some("lumina-reasoning"),
    },
    CatalogEntry {
        id: "lumina-fusion",
        choice: ModelChoice::Path(RoutePath::Fusion),
        alias_of: None,
    },
    CatalogEntry {
        id: "lumina-embeddings",
        choice: ModelChoice::Path(RoutePath::Embeddings),
        alias_of: None,
    },
    CatalogEntry {
        id: "lumina-auto-2025-06",
        choice: ModelChoice::Auto,
        alias_of: Some("lumina-auto"),
    },
    CatalogEntry {
        id: "lumina-fast-2025-06",
        choice: ModelChoice::Path(RoutePath::Fast),
        alias_of: Some("lumina-fast"),
    },
    CatalogEntry {
        id: "lumina-balanced-2025-06",
        choice: ModelChoice::Path(RoutePath::Balanced),
        alias_of: Some("lumina-balanced"),
    },
    CatalogEntry {
        id: "lumina-reasoning-2025-06",
        choice: ModelChoice::Path(RoutePath::Reasoning),
        alias_of: Some("lumina-reasoning"),
    },
];

/// Aliases used when the configuration has no `[aliases]`: Claude's model families, so Claude
/// Code and other Anthropic clients work with their own model names.
pub const DEFAULT_ALIASES: [(&str, &str); 3] = [
    ("claude-*haiku*", "fast"),
    ("claude-*sonnet*", "balanced"),
    ("claude-*opus*", "reasoning"),
];

/// A model name (or a pattern with `*` wildcards) that routes as a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The name, or the pattern.
    pub pattern: String,
    /// What it routes to.
    pub choice: ModelChoice,
}

impl Alias {
    /// Parses `target` (`auto`, `fast`, `balanced`, `reasoning`, `embeddings`, or a `lumina-*`
    /// model id) for `pattern`.
    pub fn new(pattern: &str, target: &str) -> Result<Alias, String> {
        let choice = match target {
            "auto" => ModelChoice::Auto,
            "fast" => ModelChoice::Path(RoutePath::Fast),
            "balanced" => ModelChoice::Path(RoutePath::Balanced),
            "reasoning" => ModelChoice::Path(RoutePath::Reasoning),
            "embeddings" => ModelChoice::Path(RoutePath::Embeddings),
            other => match ENTRIES.iter().find(|e| e.id == other) {
                Some(e) => e.choice,
                None => {
                    return Err(format!(
                        "aliases.\"{pattern}\": '{other}' is not auto, fast, balanced, reasoning, embeddings or a lumina-* model"
                    ));
                }
            },
        };
        if pattern.is_empty() {
            return Err("aliases: an alias needs a name".into());
        }
        Ok(Alias {
            pattern: pattern.to_string(),
            choice,
        })
    }

    fn matches(&self, model: &str) -> bool {
        glob(&self.pattern, model)
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The models this gateway offers.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<&'static CatalogEntry>,
    aliases: Vec<Alias>,
}

impl Catalog {
    /// The catalog; `lumina-fusion` is listed only when Fusion is enabled, `lumina-embeddings`
    /// only when a deployment serves embeddings.
    pub fn new(fusion_enabled: bool, embeddings_enabled: bool) -> Catalog {
        Catalog {
            entries: ENTRIES
                .iter()
                .filter(|e| match e.choice {
                    ModelChoice::Path(RoutePath::Fusion) => fusion_enabled,
                    ModelChoice::Path(RoutePath::Embeddings) => embeddings_enabled,
                    _ => true,
                })
                .collect(),
            aliases: Vec::new(),
        }
    }

    /// The catalog with `aliases` (exact names before patterns) routing other model names.
    pub fn with_aliases(mut self, mut aliases: Vec<Alias>) -> Catalog {
        aliases.sort_by_key(|a| a.pattern.contains('*'));
        self.aliases = aliases;
        self
    }

    /// Every model, canonical ids first in catalog order, then aliases.
    pub fn entries(&self) -> impl Iterator<Item = &'static CatalogEntry> + '_ {
        self.entries.iter().copied()
    }

    /// What `model` routes to, if offered: a catalog id, else the first alias that matches.
    pub fn resolve(&self, model: &str) -> Option<ModelChoice> {
        self.entries
            .iter()
            .find(|e| e.id == model)
            .map(|e| e.choice)
            .or_else(|| {
                self.aliases
                    .iter()
                    .find(|a| a.matches(model))
                    .map(|a| a.choice)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_their_paths() {
        let c = Catalog::new(false, false);
        assert_eq!(
            c.resolve("lumina-thinking"),
            Some(ModelChoice::Path(RoutePath::Reasoning))
        );
        assert_eq!(
            c.resolve("lumina-fast-2025-06"),
            Some(ModelChoice::Path(RoutePath::Fast))
        );
        assert_eq!(c.resolve("lumina-auto"), Some(ModelChoice::Auto));
        assert_eq!(c.resolve("gpt-4o"), None);
    }

    #[test]
    fn aliases_route_other_model_names_exact_names_first() {
        let defaults = DEFAULT_ALIASES
            .iter()
            .map(|(p, t)| Alias::new(p, t).unwrap())
            .chain([Alias::new("claude-opus-4-1-special", "fast").unwrap()])
            .collect();
        let c = Catalog::new(false, false).with_aliases(defaults);
        let path = |m| c.resolve(m);
        assert_eq!(
            path("claude-sonnet-4-5-20250929"),
            Some(ModelChoice::Path(RoutePath::Balanced))
        );
        assert_eq!(
            path("claude-3-5-haiku-latest"),
            Some(ModelChoice::Path(RoutePath::Fast))
        );
        assert_eq!(
            path("claude-opus-4-1"),
            Some(ModelChoice::Path(RoutePath::Reasoning))
        );
        assert_eq!(
            path("claude-opus-4-1-special"),
            Some(ModelChoice::Path(RoutePath::Fast))
        );
        assert_eq!(path("claude-instant"), None);
        assert_eq!(path("gpt-4o"), None);
        assert!(
            Alias::new("x", "medium")
                .unwrap_err()
                .contains("aliases.\"x\"")
        );
        assert_eq!(
            Alias::new("x", "lumina-thinking").unwrap().choice,
            ModelChoice::Path(RoutePath::Reasoning)
        );
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("a*c", "abbbc"));
        assert!(glob("*", ""));
        assert!(glob("ab", "ab"));
        assert!(!glob("ab", "abc"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxcyyb"));
    }

    #[test]
    fn fusion_is_listed_only_when_enabled() {
        assert_eq!(Catalog::new(false, false).resolve("lumina-fusion"), None);
        assert!(
            Catalog::new(true, false)
                .entries()
                .any(|e| e.id == "lumina-fusion")
        );
    }
}
