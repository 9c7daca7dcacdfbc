//! Scopes: `org-campaign-project` triples with hierarchical wildcards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a scope (or one of its components) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope '{0}' must have exactly three '-'-separated parts (org-campaign-project)")]
    Parts(String),
    #[error(
        "scope component '{0}' is invalid: it must start with an ASCII letter and contain only ASCII letters, digits and '_' (or be '*')"
    )]
    Component(String),
    #[error("scope '{0}' is invalid: once a component is '*', every later component must be '*' too")]
    Hierarchy(String),
    #[error("scope '{0}' is not specific: objects can only be stored in scopes without wildcards")]
    NotSpecific(String),
}

/// True if `s` is a concrete scope component: `[A-Za-z][A-Za-z0-9_]*`.
pub fn is_valid_component(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
        _ => false,
    }
}

/// A scope. `None` components are wildcards (`*` in string form).
///
/// Invariant: components are valid and once one is `None` every later one is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    org: Option<String>,
    campaign: Option<String>,
    project: Option<String>,
}

impl Scope {
    /// The all-encompassing scope `*-*-*`.
    pub fn all() -> Scope {
        Scope { org: None, campaign: None, project: None }
    }

    /// Build a scope from optional components (`None` or `"*"` mean wildcard).
    pub fn new(org: Option<&str>, campaign: Option<&str>, project: Option<&str>) -> Result<Scope, ScopeError> {
        fn norm(c: Option<&str>) -> Result<Option<String>, ScopeError> {
            match c {
                None | Some("*") => Ok(None),
                Some(s) if is_valid_component(s) => Ok(Some(s.to_string())),
                Some(s) => Err(ScopeError::Component(s.to_string())),
            }
        }
        let scope = Scope { org: norm(org)?, campaign: norm(campaign)?, project: norm(project)? };
        let ok = !matches!((&scope.org, &scope.campaign, &scope.project), (None, Some(_), _) | (None, _, Some(_)) | (_, None, Some(_)));
        if ok {
            Ok(scope)
        } else {
            Err(ScopeError::Hierarchy(scope.to_string()))
        }
    }

    /// Build a specific scope (no wildcards allowed).
    pub fn specific(org: &str, campaign: &str, project: &str) -> Result<Scope, ScopeError> {
        let s = Scope::new(Some(org), Some(campaign), Some(project))?;
        if s.is_specific() {
            Ok(s)
        } else {
            Err(ScopeError::NotSpecific(s.to_string()))
        }
    }

    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }
    pub fn campaign(&self) -> Option<&str> {
        self.campaign.as_deref()
    }
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// All three components concrete.
    pub fn is_specific(&self) -> bool {
        self.project.is_some()
    }

    /// Non-strict superset test (`self ⊇ other`): every concrete component of `self`
    /// equals the corresponding component of `other`.
    pub fn is_superset(&self, other: &Scope) -> bool {
        fn comp(a: &Option<String>, b: &Option<String>) -> bool {
            match a {
                None => true,
                Some(a) => b.as_deref() == Some(a.as_str()),
            }
        }
        comp(&self.org, &other.org) && comp(&self.campaign, &other.campaign) && comp(&self.project, &other.project)
    }

    /// The JSON object form `{"org": .., "campaign": .., "project": ..}` with `null` wildcards.
    pub fn to_dict(&self) -> ScopeDict {
        ScopeDict { org: self.org.clone(), campaign: self.campaign.clone(), project: self.project.clone() }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |x: &Option<String>| x.clone().unwrap_or_else(|| "*".to_string());
        write!(f, "{}-{}-{}", c(&self.org), c(&self.campaign), c(&self.project))
    }
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 3 {
            return Err(ScopeError::Parts(s.to_string()));
        }
        Scope::new(Some(parts[0]), Some(parts[1]), Some(parts[2]))
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scope {
    /// Code-point order of the string forms; `*` sorts before every concrete component,
    /// so a scope sorts before every scope it strictly contains.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// JSON object form of a scope; missing members and `"*"` mean wildcard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeDict {
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
}

impl ScopeDict {
    pub fn to_scope(&self) -> Result<Scope, ScopeError> {
        Scope::new(self.org.as_deref(), self.campaign.as_deref(), self.project.as_deref())
    }
}

/// Sort by string form and keep a scope only if no kept scope is a superset of it.
pub fn minimise(scopes: &[Scope]) -> Vec<Scope> {
    let mut sorted: Vec<Scope> = scopes.to_vec();
    sorted.sort();
    let mut kept: Vec<Scope> = Vec::new();
    for s in sorted {
        if !kept.iter().any(|k| k.is_superset(&s)) {
            kept.push(s);
        }
    }
    kept
}

/// The search space of a (possibly wildcard) query scope `query` for a caller holding
/// `token_scopes`.
pub fn query_space(query: &Scope, token_scopes: &[Scope]) -> Vec<Scope> {
    let minimal = minimise(token_scopes);
    if minimal.iter().any(|t| t.is_superset(query)) {
        return vec![query.clone()];
    }
    minimal.into_iter().filter(|t| query.is_superset(t)).collect()
}

/// Single-object authorisation: some token scope is a superset of `target`.
pub fn authorised(target: &Scope, token_scopes: &[Scope]) -> bool {
    token_scopes.iter().any(|t| t.is_superset(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        x.parse().unwrap()
    }

    #[test]
    fn grammar() {
        for ok in ["*-*-*", "org-*-*", "org-camp-*", "org-camp-proj", "a_b-Org_1-x9"] {
            assert_eq!(s(ok).to_string(), ok);
        }
        for bad in [
            "*-camp-*",
            "*-*-proj",
            "org-*-proj",
            "*-camp-proj",
            "0a-b-c",
            "_a-b-c",
            "a b-c-d",
            "a!-b-c",
            "a-b",
            "a-b-c-d",
            "",
            "--",
            "é-b-c",
            "a--c",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad} should be invalid");
        }
        assert!(matches!("*-camp-*".parse::<Scope>(), Err(ScopeError::Hierarchy(_))));
        assert!(matches!("a-b".parse::<Scope>(), Err(ScopeError::Parts(_))));
        assert!(matches!("a-0-c".parse::<Scope>(), Err(ScopeError::Component(_))));
    }

    #[test]
    fn dict_form_normalises_star() {
        let d = ScopeDict { org: Some("org".into()), campaign: Some("*".into()), project: None };
        assert_eq!(d.to_scope().unwrap().to_string(), "org-*-*");
        assert_eq!(s("org-*-*").to_dict(), ScopeDict { org: Some("org".into()), campaign: None, project: None });
        let bad = ScopeDict { org: None, campaign: Some("x".into()), project: None };
        assert!(bad.to_scope().is_err());
    }

    #[test]
    fn specific() {
        assert!(s("a-b-c").is_specific());
        assert!(!s("a-b-*").is_specific());
        assert!(Scope::specific("a", "b", "*").is_err());
    }

    #[test]
    fn superset_and_ordering() {
        assert!(s("*-*-*").is_superset(&s("a-b-c")));
        assert!(s("a-*-*").is_superset(&s("a-b-*")));
        assert!(s("a-b-c").is_superset(&s("a-b-c")));
        assert!(!s("a-b-c").is_superset(&s("a-b-*")));
        assert!(!s("a-*-*").is_superset(&s("b-*-*")));
        assert!(s("a-*-*") < s("a-b-*"));
        assert!(s("*-*-*") < s("A-b-c"));
    }

    #[test]
    fn minimise_drops_redundant() {
        let m = minimise(&[s("a-b-c"), s("a-*-*"), s("b-c-*"), s("b-c-d"), s("a-*-*")]);
        let m: Vec<String> = m.iter().map(|x| x.to_string()).collect();
        assert_eq!(m, ["a-*-*", "b-c-*"]);
    }

    #[test]
    fn query_space_examples_from_spec() {
        let t: Vec<Scope> =
            ["org1-campaignA-projectI", "org1-campaignB-projectI", "org1-campaignB-projectII", "org2-*-*", "org3-campaignA-*"]
                .iter()
                .map(|x| s(x))
                .collect();
        let q = |x: &str| query_space(&s(x), &t).iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(q("org1-campaignB-*"), ["org1-campaignB-projectI", "org1-campaignB-projectII"]);
        assert_eq!(q("*-*-*").len(), 5);
        assert_eq!(q("org2-campaignC-*"), ["org2-campaignC-*"]);
        assert!(q("org4-*-*").is_empty());
        assert!(q("org1-campaignB-projectIII").is_empty());
        // upstream's documented example
        let t2: Vec<Scope> = ["acme-campA-proj1", "acme-campB-*", "beta-*-*"].iter().map(|x| s(x)).collect();
        let q2 = |x: &str| query_space(&s(x), &t2).iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(q2("acme-*-*"), ["acme-campA-proj1", "acme-campB-*"]);
        assert_eq!(q2("beta-x-*"), ["beta-x-*"]);
        assert!(q2("gamma-*-*").is_empty());
    }

    #[test]
    fn authorisation() {
        let t = [s("acme-campA-*")];
        assert!(authorised(&s("acme-campA-p"), &t));
        assert!(!authorised(&s("acme-campB-p"), &t));
        assert!(!authorised(&s("acme-*-*"), &t));
    }
}
