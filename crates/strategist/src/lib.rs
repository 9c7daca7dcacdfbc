//! The strategist: executes the Strategies users attach to networks.
//!
//! A user attaches a Strategy to a network (user API `POST /networks/{sk}/strategy`); the
//! strategist wakes every `sleep_interval`, asks each due strategy which transformations
//! deserve more sampling, and creates, actions and cancels the network's tasks
//! accordingly.
//!
//! * [`service`]: the loop (due strategies, workers, timing).
//! * [`execute`]: one execution of one network's strategy, committed in one transaction.
//! * [`native`]: stratocaster's `ConnectivityStrategy` and `RadialGrowthStrategy` in Rust,
//!   over [`graph`]; [`python`]: every other strategy class, through a driver script in a
//!   configured interpreter, with the results it gathers cached by [`cache`].
//! * [`settings`]: the settings file.
//!
//! The bookkeeping from weights to tasks is `alchemiscale_model::strategy` (pure rules)
//! applied by `alchemiscale_store::strategist` (one transaction per execution).

pub mod cache;
pub mod execute;
pub mod graph;
pub mod native;
pub mod python;
pub mod service;
pub mod settings;

pub use execute::Context;
pub use service::{CycleSummary, Strategist};
pub use settings::Settings;

/// An execution's failure as the strategy state records it: the exception class, its
/// message and a traceback.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyError {
    pub class: String,
    pub message: String,
    pub traceback: Option<String>,
}

impl StrategyError {
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> StrategyError {
        StrategyError { class: class.into(), message: message.into(), traceback: None }
    }

    /// A pydantic-style validation error of one field.
    pub fn validation(model: &str, field: &str, message: &str) -> StrategyError {
        StrategyError::new("ValidationError", format!("1 validation error for {model}\n{field}\n  {message}"))
    }
}

impl std::fmt::Display for StrategyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}
