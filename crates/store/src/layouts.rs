//! The web console's network drawings, kept: a network's structure never changes once
//! submitted, so the node positions of its force-directed layout are computed once (by the
//! console, in the background after submission or at the first view) and stored here for
//! every API instance and every restart. Derived data: not dumped, made again after a load.

use alchemiscale_model::ScopedKey;

use crate::db::{get_str, Arg};
use crate::error::Result;
use crate::queries::sk_from;
use crate::Store;

impl Store {
    /// The stored layout of a network (by row id), as the console wrote it.
    pub async fn console_layout(&self, network_id: i64) -> Result<Option<String>> {
        let rows = self.fetch("SELECT positions FROM console_layout WHERE network_id = $1", &[Arg::I64(network_id)]).await?;
        rows.first().map(|r| get_str(r, 0)).transpose()
    }

    /// Keep a network's layout; the first one stored stays.
    pub async fn put_console_layout(&self, network_id: i64, positions: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO console_layout (network_id, positions) VALUES ($1, $2) ON CONFLICT (network_id) DO NOTHING")
            .bind(network_id)
            .bind(positions)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Networks with no stored layout yet, newest first, at most `limit`.
    pub async fn console_networks_without_layout(&self, limit: i64) -> Result<Vec<ScopedKey>> {
        let rows = self
            .fetch(
                "SELECT o.gufe_key, o.org, o.campaign, o.project FROM network n JOIN gufe_object o ON o.id = n.id \
                 WHERE NOT EXISTS (SELECT 1 FROM console_layout l WHERE l.network_id = n.id) ORDER BY n.id DESC LIMIT $1",
                &[Arg::I64(limit)],
            )
            .await?;
        rows.iter().map(|r| sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)).collect()
    }
}
