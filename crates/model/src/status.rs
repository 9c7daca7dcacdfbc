//! Enumerated states: task statuses and their transition table, network
//! states, strategy and compute-manager enums.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind}")]
pub struct EnumError {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $name {
            type Err = EnumError;
            fn from_str(s: &str) -> Result<Self, EnumError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(EnumError { kind: $kind, value: s.to_string() }),
                }
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
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

string_enum!(
    /// Status of a Task.
    TaskStatus, "TaskStatusEnum", {
    Complete => "complete",
    Waiting => "waiting",
    Running => "running",
    Error => "error",
    Invalid => "invalid",
    Deleted => "deleted",
});

string_enum!(
    /// State of a network, carried by its NetworkMark.
    NetworkState, "state", {
    Active => "active",
    Inactive => "inactive",
    Invalid => "invalid",
    Deleted => "deleted",
});

string_enum!(
    /// StrategyState.mode.
    StrategyMode, "StrategyModeEnum", {
    Full => "full",
    Partial => "partial",
    Disabled => "disabled",
});

string_enum!(
    /// StrategyState.status.
    StrategyStatus, "StrategyStatusEnum", {
    Awake => "awake",
    Dormant => "dormant",
    Error => "error",
});

string_enum!(
    /// StrategyState.task_scaling.
    StrategyTaskScaling, "StrategyTaskScalingEnum", {
    Linear => "linear",
    Exponential => "exponential",
});

string_enum!(
    /// Status reported by a compute manager.
    ComputeManagerStatus, "ComputeManagerStatus", {
    Ok => "OK",
    Error => "ERROR",
});

impl TaskStatus {
    /// True for `invalid` and `deleted`, from which nothing but re-application leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Invalid | TaskStatus::Deleted)
    }
}

/// The store-level transition table: may a task in `from` be set to `to`?
///
/// Every task status change in the system goes through this function (re-applying the
/// current status is allowed, except that nothing leaves a terminal state).
pub fn transition_allowed(from: TaskStatus, to: TaskStatus) -> bool {
    use TaskStatus::*;
    match (from, to) {
        (a, b) if a == b => true,
        (Waiting, Running | Invalid | Deleted) => true,
        (Running, _) => true,
        (Complete, Invalid | Deleted) => true,
        (Error, Waiting | Invalid | Deleted) => true,
        _ => false,
    }
}

/// What must happen besides setting the status when a transition to `to` is applied
///.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionEffects {
    /// Remove the task's claim (if any).
    pub drop_claim: bool,
    /// Remove every ACTIONS edge to the task (from every hub).
    pub drop_actions: bool,
    /// Remove every APPLIES edge of restart patterns to the task.
    pub drop_applies: bool,
    /// Apply the same status to every task that transitively extends this one.
    pub cascade_to_descendants: bool,
}

pub fn transition_effects(to: TaskStatus) -> TransitionEffects {
    use TaskStatus::*;
    match to {
        Waiting | Error => TransitionEffects { drop_claim: true, drop_actions: false, drop_applies: false, cascade_to_descendants: false },
        Running => TransitionEffects { drop_claim: false, drop_actions: false, drop_applies: false, cascade_to_descendants: false },
        Complete => TransitionEffects { drop_claim: true, drop_actions: true, drop_applies: true, cascade_to_descendants: false },
        Invalid | Deleted => TransitionEffects { drop_claim: true, drop_actions: true, drop_applies: true, cascade_to_descendants: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus::*;

    #[test]
    fn transition_table_matches_spec() {
        // rows: from; columns: waiting running complete error invalid deleted
        let table = [
            (Waiting, [true, true, false, false, true, true]),
            (Running, [true, true, true, true, true, true]),
            (Complete, [false, false, true, false, true, true]),
            (Error, [true, false, false, true, true, true]),
            (Invalid, [false, false, false, false, true, false]),
            (Deleted, [false, false, false, false, false, true]),
        ];
        let cols = [Waiting, Running, Complete, Error, Invalid, Deleted];
        for (from, row) in table {
            for (to, expected) in cols.iter().zip(row) {
                assert_eq!(transition_allowed(from, *to), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn enums_parse_and_print() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), *s);
        }
        let e = "bogus".parse::<TaskStatus>().unwrap_err();
        assert_eq!(e.to_string(), "'bogus' is not a valid TaskStatusEnum");
        assert_eq!("OK".parse::<ComputeManagerStatus>().unwrap(), ComputeManagerStatus::Ok);
        assert!("ok".parse::<ComputeManagerStatus>().is_err());
        assert_eq!(NetworkState::ALL.len(), 4);
    }

    #[test]
    fn effects() {
        assert!(transition_effects(Complete).drop_actions);
        assert!(!transition_effects(Error).drop_actions);
        assert!(transition_effects(Deleted).cascade_to_descendants);
        assert!(transition_effects(Waiting).drop_claim);
        assert!(!transition_effects(Running).drop_claim);
    }
}
