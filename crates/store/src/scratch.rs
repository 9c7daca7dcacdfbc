//! Throwaway PostgreSQL schemas, so benchmarks and tests never touch real data.

use crate::error::{Result, StoreError};
use crate::StoreLocation;

/// A fresh schema in the database `base_url` points at; connections to the returned
/// location use it as their `search_path`.
pub struct ScratchSchema {
    pub location: StoreLocation,
    pub schema: String,
    base_url: String,
}

impl ScratchSchema {
    pub async fn create(base_url: &str) -> Result<ScratchSchema> {
        use rand::Rng;
        sqlx::any::install_default_drivers();
        let schema = format!("scratch_{:032x}", rand::thread_rng().gen::<u128>());
        let admin = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(base_url).await.map_err(StoreError::from)?;
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await?;
        admin.close().await;
        let sep = if base_url.contains('?') { '&' } else { '?' };
        let location = StoreLocation::Postgres { url: format!("{base_url}{sep}options=-c%20search_path%3D{schema}") };
        Ok(ScratchSchema { location, schema, base_url: base_url.to_string() })
    }

    /// Drop the schema and everything in it.
    pub async fn drop(self) -> Result<()> {
        let admin = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&self.base_url).await.map_err(StoreError::from)?;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema)).execute(&admin).await?;
        admin.close().await;
        Ok(())
    }
}
