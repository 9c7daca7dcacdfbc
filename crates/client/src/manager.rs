//! The compute-manager routes of the compute API (routes C15–C19), as upstream's
//! `AlchemiscaleComputeManagerClient` calls them.

use alchemiscale_model::manager::ManagerInstruction;
use alchemiscale_model::status::ComputeManagerStatus;
use alchemiscale_model::{ComputeManagerId, Scope};
use serde_json::json;

use crate::{Client, ClientError, Result};

fn manager_id(v: &serde_json::Value) -> Result<ComputeManagerId> {
    let s = v.as_str().ok_or_else(|| ClientError::Decode(format!("expected a compute manager id string, got {v}")))?;
    s.parse().map_err(|e: alchemiscale_model::KeyError| ClientError::Decode(e.to_string()))
}

impl Client {
    /// C15: register a compute manager; `steal` replaces an OK registration of the same
    /// name (a crashed predecessor's).
    pub async fn register_manager(&self, id: &ComputeManagerId, steal: bool) -> Result<ComputeManagerId> {
        manager_id(&self.post(&format!("/computemanager/{id}/register"), &json!({ "steal": steal })).await?)
    }

    /// C16: deregister (an ERROR registration stays, for an administrator to see).
    pub async fn deregister_manager(&self, id: &ComputeManagerId) -> Result<ComputeManagerId> {
        manager_id(&self.post(&format!("/computemanager/{id}/deregister"), &json!({})).await?)
    }

    /// C17: what to do next, for services claiming in `scopes` (empty: everything the
    /// identity may see) and running `protocols` (empty: any).
    pub async fn manager_instruction(&self, id: &ComputeManagerId, scopes: &[Scope], protocols: &[String]) -> Result<ManagerInstruction> {
        let body = json!({ "scopes": scopes.iter().map(Scope::to_dict).collect::<Vec<_>>(), "protocols": protocols });
        let v = self.post(&format!("/computemanager/{id}/instruction"), &body).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Decode(format!("unexpected compute manager instruction: {e}")))
    }

    /// C18: report status OK with a saturation, or ERROR with a detail.
    pub async fn update_manager_status(
        &self,
        id: &ComputeManagerId,
        status: ComputeManagerStatus,
        detail: Option<&str>,
        saturation: Option<f64>,
    ) -> Result<ComputeManagerId> {
        let body = json!({ "status": status.to_string(), "detail": detail, "saturation": saturation });
        manager_id(&self.post(&format!("/computemanager/{id}/status"), &body).await?)
    }

    /// C19: remove the ERROR registration of the manager called `name`.
    pub async fn clear_manager_error(&self, name: &str) -> Result<()> {
        self.post(&format!("/computemanager/{name}/clear_error"), &json!({})).await.map(|_| ())
    }
}
