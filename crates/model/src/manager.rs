//! Compute managers' rules: the instruction a manager receives and how many
//! compute services it starts in one cycle.

use serde::{Deserialize, Serialize};

use crate::ComputeServiceId;

/// What a compute manager should do next. Its serde form is the wire form of the
/// instruction route, e.g. `{"instruction": "OK", "compute_service_ids": [...],
/// "num_tasks": 3}`; extra members are tolerated when reading, as upstream's client does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "instruction")]
pub enum ManagerInstruction {
    /// The manager's registration is gone: stop.
    #[serde(rename = "SHUTDOWN")]
    Shutdown { message: String },
    /// A managed service is over the failure limit: start nothing this cycle.
    #[serde(rename = "SKIP")]
    Skip { compute_service_ids: Vec<ComputeServiceId> },
    /// The managed services and the number of tasks they could claim.
    #[serde(rename = "OK")]
    Ok { compute_service_ids: Vec<ComputeServiceId>, num_tasks: i64 },
}

/// The limits the sizing rule works within (a manager's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Cap on concurrently running services.
    pub max_compute_services: u64,
    /// Cap on services started in one cycle.
    pub max_submit_per_cycle: u64,
    /// Tasks each service claims per request.
    pub claim_limit: u64,
}

impl Sizing {
    /// Services to start this cycle, given the claimable tasks and the services already
    /// running (or pending): `min(num_tasks, max_submit_per_cycle, remaining capacity) ÷
    /// claim_limit` (integer division), at least 1 when there is both work and capacity,
    /// 0 otherwise. Upstream's rule, word for word.
    pub fn services_to_start(&self, num_tasks: i64, active: u64) -> u64 {
        let remaining = self.max_compute_services.saturating_sub(active);
        if remaining == 0 || num_tasks <= 0 {
            return 0;
        }
        let jobs = (num_tasks as u64).min(self.max_submit_per_cycle).min(remaining) / self.claim_limit.max(1);
        jobs.max(1)
    }

    /// The saturation a manager reports: running services over the cap, within [0, 1].
    pub fn saturation(&self, services: u64) -> f64 {
        if self.max_compute_services == 0 {
            return 1.0;
        }
        (services as f64 / self.max_compute_services as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Sizing = Sizing { max_compute_services: 8, max_submit_per_cycle: 3, claim_limit: 1 };

    #[test]
    fn sizing_follows_the_smallest_limit() {
        assert_eq!(S.services_to_start(200, 0), 3, "rate limit");
        assert_eq!(S.services_to_start(2, 0), 2, "tasks");
        assert_eq!(S.services_to_start(200, 7), 1, "capacity");
        assert_eq!(S.services_to_start(200, 8), 0, "full");
        assert_eq!(S.services_to_start(200, 9), 0, "over full");
        assert_eq!(S.services_to_start(0, 0), 0, "no work");
        assert_eq!(S.services_to_start(-1, 0), 0, "no work");
    }

    #[test]
    fn claim_limit_divides_with_a_floor_of_one() {
        let s = Sizing { claim_limit: 2, max_submit_per_cycle: 8, ..S };
        assert_eq!(s.services_to_start(7, 0), 3);
        assert_eq!(s.services_to_start(1, 0), 1, "the divide collapses to 0: start one anyway");
        assert_eq!(s.services_to_start(200, 7), 1);
    }

    #[test]
    fn saturation_is_a_fraction_of_the_cap() {
        assert_eq!(S.saturation(0), 0.0);
        assert_eq!(S.saturation(2), 0.25);
        assert_eq!(S.saturation(12), 1.0);
    }

    #[test]
    fn instructions_read_and_write_the_wire_form() {
        let id: ComputeServiceId = "w-0123456789abcdef0123456789abcdef".parse().unwrap();
        let ok = ManagerInstruction::Ok { compute_service_ids: vec![id.clone()], num_tasks: 3 };
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(text, r#"{"instruction":"OK","compute_service_ids":["w-0123456789abcdef0123456789abcdef"],"num_tasks":3}"#);
        assert_eq!(serde_json::from_str::<ManagerInstruction>(&text).unwrap(), ok);
        let skip: ManagerInstruction = serde_json::from_str(r#"{"instruction":"SKIP","compute_service_ids":[],"extra":1}"#).unwrap();
        assert_eq!(skip, ManagerInstruction::Skip { compute_service_ids: vec![] });
        let stop: ManagerInstruction = serde_json::from_str(r#"{"instruction":"SHUTDOWN","message":"m"}"#).unwrap();
        assert_eq!(stop, ManagerInstruction::Shutdown { message: "m".into() });
        assert!(serde_json::from_str::<ManagerInstruction>(r#"{"instruction":"MAYBE"}"#).is_err());
    }
}
