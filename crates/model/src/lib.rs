//! The alchemiscale data model: pure types and rules, no I/O.
//!
//! * [`scope`]: `org-campaign-project` scopes, wildcards, matching and the token-scope rules.
//! * [`keys`]: gufe keys, scoped keys, compute service/manager ids.
//! * [`json`]: gufe JSON — Python's JSON dialect, losslessly, plus the hashing writer.
//! * [`chain`]: keyed chains and the network structure the server interprets.
//! * [`hash`]: gufe key computation for the objects the server creates.
//! * [`status`]: task statuses and the transition table every state change goes through.
//! * [`strategy`]: the strategist's rules from weights to task counts and task plans.
//! * [`manager`]: compute managers' instructions and sizing rule.

pub mod chain;
pub mod hash;
pub mod json;
pub mod keys;
pub mod manager;
pub mod pdr;
pub mod scope;
pub mod status;
pub mod strategy;
pub mod synthetic;
pub mod upload;

pub use keys::{ComputeManagerId, ComputeServiceId, GufeKey, KeyError, ScopedKey, ScopedKeyDict};
pub use scope::{Scope, ScopeDict, ScopeError};
pub use status::{NetworkState, TaskStatus};
