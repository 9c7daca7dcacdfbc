//! The strategist's bookkeeping rules, pure.
//!
//! A strategy proposes a weight per transformation (a number or null). The strategist
//! normalises them ([`normalise`]), drops transformations that have an errored task
//! ([`errored_rule`]), turns each weight into a target number of actioned tasks
//! ([`task_count`]) and decides which tasks to action, create or cancel on the network's
//! TaskHub to reach it ([`plan`]). The store applies the plan in one transaction.

use crate::status::{StrategyMode, StrategyTaskScaling, TaskStatus};

/// Why a strategy's weights cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightError {
    /// Python's `ZeroDivisionError` in stratocaster's `StrategyResult.resolve`.
    #[error("the non-null weights sum to zero, so they cannot be normalised")]
    SumZero,
    /// NaN or an infinity (upstream would carry it into the task counts).
    #[error("weight {1} for transformation {0} is not a finite number")]
    NotFinite(String, f64),
    /// Negative weights have no meaning as sampling urgency; upstream would turn them
    /// into negative task counts.
    #[error("weight {1} for transformation {0} is negative; weights must be >= 0 or null")]
    Negative(String, f64),
}

impl WeightError {
    /// The Python exception class the strategy state records.
    pub fn exception_class(&self) -> &'static str {
        match self {
            WeightError::SumZero => "ZeroDivisionError",
            WeightError::NotFinite(..) | WeightError::Negative(..) => "ValueError",
        }
    }
}

/// Step 4: divide every non-null weight by the sum of the non-null weights (as
/// stratocaster's `StrategyResult.resolve`). `keys` name the weights in error messages.
pub fn normalise<'a>(weights: impl IntoIterator<Item = (&'a str, &'a mut Option<f64>)>) -> Result<(), WeightError> {
    let mut all: Vec<&mut f64> = Vec::new();
    for (key, w) in weights {
        if let Some(v) = w {
            if !v.is_finite() {
                return Err(WeightError::NotFinite(key.to_string(), *v));
            }
            if *v < 0.0 {
                return Err(WeightError::Negative(key.to_string(), *v));
            }
            all.push(v);
        }
    }
    if all.is_empty() {
        return Ok(());
    }
    // Python's sum() adds from the left, starting at 0
    let sum = all.iter().fold(0.0, |acc, v| acc + **v);
    if sum == 0.0 {
        return Err(WeightError::SumZero);
    }
    for v in all {
        *v /= sum;
    }
    Ok(())
}

/// Step 6: a transformation with at least one task in `error` gets no tasks.
pub fn errored_rule(weight: Option<f64>, statuses: impl IntoIterator<Item = TaskStatus>) -> Option<f64> {
    if statuses.into_iter().any(|s| s == TaskStatus::Error) {
        None
    } else {
        weight
    }
}

/// Step 7: the number of tasks a (normalised) weight asks for, at most `max`:
/// null or 0 → 0; exactly 1 → `max`; otherwise `floor(1 + w·max)` (linear) or
/// `floor((1 + max)^w)` (exponential), truncated like Python's `int()`.
pub fn task_count(weight: Option<f64>, max: i64, scaling: StrategyTaskScaling) -> i64 {
    let w = match weight {
        // (float patterns compare with `==`: -0.0 is 0 too)
        None | Some(0.0) => return 0,
        Some(1.0) => return max,
        Some(w) => w,
    };
    let tasks = match scaling {
        StrategyTaskScaling::Linear => 1.0 + w * max as f64,
        StrategyTaskScaling::Exponential => ((1 + max) as f64).powf(w),
    };
    (tasks.trunc() as i64).min(max)
}

/// A task of a transformation, as the plan sees it: its status and whether it is
/// actioned on the network's TaskHub. Only `waiting`, `running` and `error` tasks matter
/// (complete, invalid and deleted tasks are never actioned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskView {
    pub id: i64,
    pub status: TaskStatus,
    pub actioned: bool,
}

/// What to do for one transformation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Existing tasks to action on the hub.
    pub action: Vec<i64>,
    /// New tasks to create and action.
    pub create: usize,
    /// Tasks to cancel (remove from the hub).
    pub cancel: Vec<i64>,
}

/// Step 8 for one transformation: reach `target` actioned tasks. `tasks` are its
/// tasks in creation order.
///
/// * More wanted: action its running tasks not actioned here, then its waiting ones
///   (oldest first), and create new tasks for the rest.
/// * Fewer wanted, `full` mode only: cancel actioned waiting tasks, then running ones
///   (newest first, so older tasks keep their place); errored tasks are never cancelled.
pub fn plan(target: i64, tasks: &[TaskView], mode: StrategyMode) -> Plan {
    let actioned = tasks.iter().filter(|t| t.actioned).count() as i64;
    let mut out = Plan::default();
    if target > actioned {
        let need = (target - actioned) as usize;
        for status in [TaskStatus::Running, TaskStatus::Waiting] {
            let more = need - out.action.len();
            out.action.extend(tasks.iter().filter(|t| !t.actioned && t.status == status).take(more).map(|t| t.id));
        }
        out.create = need - out.action.len();
    } else if target < actioned && mode == StrategyMode::Full {
        let excess = (actioned - target) as usize;
        for status in [TaskStatus::Waiting, TaskStatus::Running] {
            let more = excess - out.cancel.len();
            out.cancel.extend(tasks.iter().rev().filter(|t| t.actioned && t.status == status).take(more).map(|t| t.id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use StrategyTaskScaling::{Exponential, Linear};
    use TaskStatus::{Error, Running, Waiting};

    fn norm(ws: &[Option<f64>]) -> Result<Vec<Option<f64>>, WeightError> {
        let mut ws = ws.to_vec();
        let keys: Vec<String> = (0..ws.len()).map(|i| format!("t{i}")).collect();
        normalise(keys.iter().map(String::as_str).zip(ws.iter_mut()))?;
        Ok(ws)
    }

    #[test]
    fn normalisation() {
        assert_eq!(norm(&[Some(1.0), None, Some(3.0)]).unwrap(), vec![Some(0.25), None, Some(0.75)]);
        assert_eq!(norm(&[None, None]).unwrap(), vec![None, None]);
        assert_eq!(norm(&[]).unwrap(), vec![]);
        assert_eq!(norm(&[Some(2.0)]).unwrap(), vec![Some(1.0)]);
        assert_eq!(norm(&[Some(0.0), Some(0.0), None]), Err(WeightError::SumZero));
        assert_eq!(norm(&[Some(0.0), Some(0.5)]).unwrap(), vec![Some(0.0), Some(1.0)]);
        assert!(matches!(norm(&[Some(f64::NAN)]), Err(WeightError::NotFinite(k, _)) if k == "t0"));
        assert!(matches!(norm(&[Some(1.0), Some(f64::INFINITY)]), Err(WeightError::NotFinite(k, _)) if k == "t1"));
        assert_eq!(norm(&[Some(1.0), Some(-0.5)]), Err(WeightError::Negative("t1".into(), -0.5)));
        assert_eq!(WeightError::SumZero.exception_class(), "ZeroDivisionError");
    }

    #[test]
    fn task_counts_follow_the_scaling_rules() {
        // null, zero, one
        assert_eq!(task_count(None, 3, Linear), 0);
        assert_eq!(task_count(Some(0.0), 3, Exponential), 0);
        assert_eq!(task_count(Some(1.0), 3, Linear), 3);
        assert_eq!(task_count(Some(1.0), 7, Exponential), 7);
        // linear: floor(1 + w*M)
        assert_eq!(task_count(Some(0.5), 3, Linear), 2); // 2.5
        assert_eq!(task_count(Some(0.2), 3, Linear), 1); // 1.6
        assert_eq!(task_count(Some(0.7), 3, Linear), 3); // 3.1 -> capped at 3
        assert_eq!(task_count(Some(0.0005), 3, Linear), 1);
        // exponential: floor((1+M)^w)
        assert_eq!(task_count(Some(0.5), 3, Exponential), 2); // 4^0.5 = 2
        assert_eq!(task_count(Some(0.25), 3, Exponential), 1); // 1.41
        assert_eq!(task_count(Some(0.99), 3, Exponential), 3); // 3.94
        assert_eq!(task_count(Some(0.5), 8, Exponential), 3); // 9^0.5 = 3
        assert_eq!(task_count(Some(0.0005), 3, Exponential), 1);
    }

    fn tv(id: i64, status: TaskStatus, actioned: bool) -> TaskView {
        TaskView { id, status, actioned }
    }

    #[test]
    fn errored_transformations_get_no_weight() {
        assert_eq!(errored_rule(Some(0.5), [Waiting, Running]), Some(0.5));
        assert_eq!(errored_rule(Some(0.5), [Waiting, Error]), None);
        assert_eq!(errored_rule(None, []), None);
    }

    #[test]
    fn more_tasks_action_running_then_waiting_then_create() {
        let tasks = [tv(1, Waiting, false), tv(2, Running, false), tv(3, Waiting, true), tv(4, Running, false), tv(5, Error, false)];
        // one actioned; target 3: two running ones first
        assert_eq!(plan(3, &tasks, StrategyMode::Partial), Plan { action: vec![2, 4], create: 0, cancel: vec![] });
        // target 4: then the oldest waiting one
        assert_eq!(plan(4, &tasks, StrategyMode::Partial), Plan { action: vec![2, 4, 1], create: 0, cancel: vec![] });
        // target 6: errored tasks are never actioned; two new ones
        assert_eq!(plan(6, &tasks, StrategyMode::Full), Plan { action: vec![2, 4, 1], create: 2, cancel: vec![] });
        // nothing yet: all created
        assert_eq!(plan(2, &[], StrategyMode::Partial), Plan { action: vec![], create: 2, cancel: vec![] });
        // target reached: nothing
        assert_eq!(plan(1, &tasks, StrategyMode::Full), Plan::default());
    }

    #[test]
    fn fewer_tasks_cancel_waiting_then_running_in_full_mode_only() {
        let tasks = [tv(1, Running, true), tv(2, Waiting, true), tv(3, Error, true), tv(4, Waiting, true), tv(5, Running, true)];
        assert_eq!(plan(3, &tasks, StrategyMode::Partial), Plan::default());
        // 5 actioned, target 3: the two waiting ones, newest first
        assert_eq!(plan(3, &tasks, StrategyMode::Full), Plan { action: vec![], create: 0, cancel: vec![4, 2] });
        // target 1: then the running ones, newest first
        assert_eq!(plan(1, &tasks, StrategyMode::Full), Plan { action: vec![], create: 0, cancel: vec![4, 2, 5, 1] });
        // target 0: the errored task stays
        assert_eq!(plan(0, &tasks, StrategyMode::Full), Plan { action: vec![], create: 0, cancel: vec![4, 2, 5, 1] });
    }
}
