//! Object identities: [`GufeKey`], [`ScopedKey`] and the compute
//! service / manager ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::scope::{is_valid_component, Scope};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("input does not appear to be a `GufeKey`: {0:?}")]
    GufeKey(String),
    #[error("input does not appear to be a `ScopedKey`")]
    ScopedKey(String),
    #[error("{kind} must have the form `{{name}}-{{uuid}}` with uuid in hex form")]
    ServiceId { kind: &'static str, input: String },
}

/// `{qualname}-{token}`: the identity of a gufe object, independent of scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GufeKey(String);

impl GufeKey {
    /// Validate: NFC-normalised, exactly one `-`, both parts non-empty, characters in
    /// `[A-Za-z0-9_-]`.
    pub fn new(s: &str) -> Result<GufeKey, KeyError> {
        let norm: String = if s.is_ascii() { s.to_string() } else { s.nfc().collect() };
        let mut parts = norm.split('-');
        let (q, t) = (parts.next(), parts.next());
        let valid = matches!((q, t, parts.next()), (Some(q), Some(t), None) if !q.is_empty() && !t.is_empty())
            && norm.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            Ok(GufeKey(norm))
        } else {
            Err(KeyError::GufeKey(s.to_string()))
        }
    }

    /// Build from a qualname and a token (both already known to be well formed).
    pub fn from_parts(qualname: &str, token: &str) -> Result<GufeKey, KeyError> {
        GufeKey::new(&format!("{qualname}-{token}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The class name part.
    pub fn qualname(&self) -> &str {
        self.0.split('-').next().unwrap_or("")
    }
    pub fn token(&self) -> &str {
        self.0.split('-').nth(1).unwrap_or("")
    }
}

impl fmt::Display for GufeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl FromStr for GufeKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        GufeKey::new(s)
    }
}
impl Serialize for GufeKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for GufeKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GufeKey::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A stored object's identity: gufe key plus a specific scope.
/// String form `{qualname}-{token}-{org}-{campaign}-{project}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedKey {
    gufe_key: GufeKey,
    scope: Scope,
}

impl ScopedKey {
    pub fn new(gufe_key: GufeKey, scope: Scope) -> Result<ScopedKey, KeyError> {
        if !scope.is_specific() {
            return Err(KeyError::ScopedKey(format!("{gufe_key}-{scope}")));
        }
        Ok(ScopedKey { gufe_key, scope })
    }

    pub fn gufe_key(&self) -> &GufeKey {
        &self.gufe_key
    }
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
    pub fn qualname(&self) -> &str {
        self.gufe_key.qualname()
    }
    pub fn org(&self) -> &str {
        self.scope.org().unwrap_or_default()
    }
    pub fn campaign(&self) -> &str {
        self.scope.campaign().unwrap_or_default()
    }
    pub fn project(&self) -> &str {
        self.scope.project().unwrap_or_default()
    }

    pub fn to_dict(&self) -> ScopedKeyDict {
        ScopedKeyDict {
            gufe_key: self.gufe_key.to_string(),
            org: self.org().to_string(),
            campaign: self.campaign().to_string(),
            project: self.project().to_string(),
        }
    }
}

impl fmt::Display for ScopedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.gufe_key, self.scope)
    }
}

impl FromStr for ScopedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let err = || KeyError::ScopedKey(s.to_string());
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 5 || !parts[2..].iter().all(|c| is_valid_component(c)) {
            return Err(err());
        }
        let gufe_key = GufeKey::new(&format!("{}-{}", parts[0], parts[1])).map_err(|_| err())?;
        let scope = Scope::specific(parts[2], parts[3], parts[4]).map_err(|_| err())?;
        Ok(ScopedKey { gufe_key, scope })
    }
}

impl PartialOrd for ScopedKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ScopedKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

impl Serialize for ScopedKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for ScopedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// JSON object form of a [`ScopedKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedKeyDict {
    pub gufe_key: String,
    pub org: String,
    pub campaign: String,
    pub project: String,
}

impl ScopedKeyDict {
    pub fn to_scoped_key(&self) -> Result<ScopedKey, KeyError> {
        format!("{}-{}-{}-{}", self.gufe_key, self.org, self.campaign, self.project).parse()
    }
}

fn is_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':'))
}

macro_rules! service_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            name: String,
            uuid: String,
        }

        impl $name {
            /// Mint a new id `name-<uuid4 hex>`.
            pub fn mint(name: &str) -> Result<$name, KeyError> {
                format!("{}-{}", name, uuid::Uuid::new_v4().simple()).parse()
            }
            pub fn name(&self) -> &str {
                &self.name
            }
            pub fn uuid(&self) -> &str {
                &self.uuid
            }
            /// True if `name` is a valid name part (`[a-zA-Z][a-zA-Z0-9_.:]*`).
            pub fn valid_name(name: &str) -> bool {
                is_service_name(name)
            }
        }

        impl FromStr for $name {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                let err = || KeyError::ServiceId { kind: $kind, input: s.to_string() };
                let (name, uuid) = s.split_once('-').ok_or_else(err)?;
                if uuid.contains('-') || !is_service_name(name) || uuid::Uuid::parse_str(uuid).is_err() {
                    return Err(err());
                }
                Ok($name { name: name.to_string(), uuid: uuid.to_string() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}-{}", self.name, self.uuid)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

service_id!(
    /// Identity of a compute service registration: `{name}-{uuid}`.
    ComputeServiceId,
    "ComputeServiceID"
);
service_id!(
    /// Identity of a compute manager registration: `{name}-{uuid}`.
    ComputeManagerId,
    "ComputeManagerID"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gufe_key_validation() {
        let k = GufeKey::new("Transformation-0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(k.qualname(), "Transformation");
        assert_eq!(k.token(), "0123456789abcdef0123456789abcdef");
        for bad in ["NoHyphen", "A-b-c", "A-b c", "A-`b`", "A-(b)", "-abc", "abc-", "A-b\"", "A-é"] {
            assert!(GufeKey::new(bad).is_err(), "{bad}");
        }
        // NFC: KELVIN SIGN normalises to ASCII 'K'
        assert_eq!(GufeKey::new("\u{212A}elvin-00").unwrap().as_str(), "Kelvin-00");
    }

    #[test]
    fn scoped_key_round_trip() {
        let s = "AlchemicalNetwork-0123456789abcdef0123456789abcdef-acme-campA-proj1";
        let sk: ScopedKey = s.parse().unwrap();
        assert_eq!(sk.to_string(), s);
        assert_eq!(sk.qualname(), "AlchemicalNetwork");
        assert_eq!(sk.scope().to_string(), "acme-campA-proj1");
        let d = sk.to_dict();
        assert_eq!(d.gufe_key, "AlchemicalNetwork-0123456789abcdef0123456789abcdef");
        assert_eq!(d.to_scoped_key().unwrap(), sk);
        for bad in ["a-b-c-d", "a-b-c-d-e-f", "A-b-org-*-p", "A-b-0rg-c-p", "A-b c-o-c-p", "A-b-o-c-"] {
            assert!(bad.parse::<ScopedKey>().is_err(), "{bad}");
        }
        let e = "x".parse::<ScopedKey>().unwrap_err();
        assert_eq!(e.to_string(), "input does not appear to be a `ScopedKey`");
    }

    #[test]
    fn service_ids() {
        let id: ComputeServiceId = "worker1-0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(id.name(), "worker1");
        assert_eq!(id.to_string(), "worker1-0123456789abcdef0123456789abcdef");
        assert!("my.host:1-0123456789abcdef0123456789abcdef".parse::<ComputeServiceId>().is_ok());
        for bad in ["my-host-0123456789abcdef0123456789abcdef", "1abc-0123456789abcdef0123456789abcdef", "abc-nothex", "abc", "abc-"] {
            assert!(bad.parse::<ComputeServiceId>().is_err(), "{bad}");
        }
        let m = ComputeManagerId::mint("mgr").unwrap();
        assert_eq!(m.uuid().len(), 32);
        let e = "x".parse::<ComputeManagerId>().unwrap_err();
        assert_eq!(e.to_string(), "ComputeManagerID must have the form `{name}-{uuid}` with uuid in hex form");
    }
}
