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
}

impl RoutePath {
    /// The path's name as recorded in events.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutePath::Fast => "fast",
            RoutePath::Balanced => "balanced",
            RoutePath::Reasoning => "reasoning",
            RoutePath::Fusion => "fusion",
        }
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

/// The models this gateway offers.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<&'static CatalogEntry>,
}

impl Catalog {
    /// The catalog; `lumina-fusion` is listed only when Fusion is enabled.
    pub fn new(fusion_enabled: bool) -> Catalog {
        Catalog {
            entries: ENTRIES
                .iter()
                .filter(|e| fusion_enabled || e.choice != ModelChoice::Path(RoutePath::Fusion))
                .collect(),
        }
    }

    /// Every model, canonical ids first in catalog order, then aliases.
    pub fn entries(&self) -> impl Iterator<Item = &'static CatalogEntry> + '_ {
        self.entries.iter().copied()
    }

    /// What `model` routes to, if offered.
    pub fn resolve(&self, model: &str) -> Option<ModelChoice> {
        self.entries
            .iter()
            .find(|e| e.id == model)
            .map(|e| e.choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_their_paths() {
        let c = Catalog::new(false);
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
    fn fusion_is_listed_only_when_enabled() {
        assert_eq!(Catalog::new(false).resolve("lumina-fusion"), None);
        assert!(
            Catalog::new(true)
                .entries()
                .any(|e| e.id == "lumina-fusion")
        );
    }
}
