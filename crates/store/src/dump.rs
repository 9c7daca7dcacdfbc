//! Portable, consistent dumps of the whole state store (`database dump` / `load`).
//!
//! A dump is taken inside one snapshot transaction, so it is consistent while the
//! servers keep running. The file is zstd-compressed JSON Lines:
//!
//! ```text
//! {"format": "alchemiscale-rs-dump", "version": 1, "schema_version": 4}
//! {"table": "gufe_object", "columns": ["id", ...], "rows": 2}
//! [1, "ChemicalSystem-…", ...]
//! [2, ...]
//! {"table": "gufe_ref", ...}
//! ...
//! {"end": true, "tables": 22, "rows": 1234, "sha256": "<hex>"}
//! ```
//!
//! The trailer's SHA-256 covers every byte before it (uncompressed), so truncation and
//! corruption are detected before anything is loaded. Rows are written in primary-key
//! order with no timestamps or backend names, so dumping, loading (into either backend)
//! and dumping again yields the same bytes.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::admin::{ColType, TableSpec, DERIVED_TABLES, TABLES};
use crate::db::{insert_rows, Arg};
use crate::error::{Result, StoreError};
use crate::{Backend, Store};

const FORMAT: &str = "alchemiscale-rs-dump";
const VERSION: i64 = 1;

/// What a dump or load covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpStats {
    pub tables: usize,
    pub rows: u64,
    pub sha256: String,
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| StoreError::Dump(e.to_string()))?;
        bytes.push(b'\n');
        self.hasher.update(&bytes);
        self.inner.write_all(&bytes).map_err(io_err)
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Dump(format!("I/O error: {e}"))
}

fn column_list(t: &TableSpec) -> String {
    t.columns.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
}

/// The layout of the tables in a dump. 2: the claim queue is a table of its own
/// (migration 0008); 3: ACTIONS rows record their queue row's key (migration 0009); 4: the
/// task status log (migration 0011). A dump of version 3 loads as it is, with the tables
/// added since ([`ADDED_SINCE_3`]) empty; older ones load with a binary of their time,
/// whose store this binary then upgrades.
fn schema_version() -> i64 {
    4
}

/// Tables a version-3 dump does not hold.
const ADDED_SINCE_3: &[&str] = &["task_status_log"];

/// The tables a dump of schema `version` lacks, loaded empty; None if this binary does not
/// load that version.
fn absent_tables(version: &serde_json::Value) -> Option<&'static [&'static str]> {
    match version.as_i64()? {
        3 => Some(ADDED_SINCE_3),
        v if v == schema_version() => Some(&[]),
        _ => None,
    }
}

impl Store {
    /// Write a dump to `out` (uncompressed JSON Lines; [`Store::dump_file`] compresses).
    pub async fn dump_to<W: Write>(&self, out: W) -> Result<DumpStats> {
        let mut w = HashingWriter { inner: out, hasher: Sha256::new() };
        let mut tx = self.begin_snapshot().await?;
        w.line(&serde_json::json!({"format": FORMAT, "version": VERSION, "schema_version": schema_version()}))?;
        let mut total = 0u64;
        for t in TABLES {
            let count: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {}", t.name)).fetch_one(&mut *tx).await?.try_get(0)?;
            let columns: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
            w.line(&serde_json::json!({"table": t.name, "columns": columns, "rows": count}))?;
            let sql = format!("SELECT {} FROM {} ORDER BY {}", column_list(t), t.name, t.order_by);
            let mut rows = sqlx::query(&sql).fetch(&mut *tx);
            let mut written = 0i64;
            while let Some(row) = rows.try_next().await? {
                let mut values = Vec::with_capacity(t.columns.len());
                for (i, (_, ty, _)) in t.columns.iter().enumerate() {
                    values.push(
                        match ty {
                            ColType::I64 => serde_json::to_value(row.try_get::<Option<i64>, _>(i)?),
                            ColType::F64 => serde_json::to_value(row.try_get::<Option<f64>, _>(i)?),
                            ColType::Text => serde_json::to_value(row.try_get::<Option<String>, _>(i)?),
                        }
                        .map_err(|e| StoreError::Dump(e.to_string()))?,
                    );
                }
                w.line(&serde_json::Value::Array(values))?;
                written += 1;
            }
            drop(rows);
            if written != count {
                return Err(StoreError::Dump(format!("table {} changed during the dump snapshot", t.name)));
            }
            total += written as u64;
        }
        tx.commit().await?;
        let sha256 = hex::encode(w.hasher.finalize_reset());
        let trailer = serde_json::json!({"end": true, "tables": TABLES.len(), "rows": total, "sha256": sha256});
        let mut bytes = serde_json::to_vec(&trailer).map_err(|e| StoreError::Dump(e.to_string()))?;
        bytes.push(b'\n');
        w.inner.write_all(&bytes).map_err(io_err)?;
        w.inner.flush().map_err(io_err)?;
        Ok(DumpStats { tables: TABLES.len(), rows: total, sha256 })
    }

    /// Dump to a zstd-compressed file, written to a temporary name and renamed into
    /// place so a failed dump never leaves a half-written file under `path`.
    pub async fn dump_file(&self, path: &Path) -> Result<DumpStats> {
        let tmp = path.with_extension("partial");
        let file = File::create(&tmp).map_err(|e| StoreError::Dump(format!("cannot create {}: {e}", tmp.display())))?;
        let encoder = zstd::Encoder::new(BufWriter::new(file), 3).map_err(io_err)?;
        let mut encoder = encoder.auto_finish();
        let result = self.dump_to(&mut encoder).await;
        drop(encoder);
        match result {
            Ok(stats) => {
                std::fs::rename(&tmp, path).map_err(io_err)?;
                Ok(stats)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Load a dump written by [`Store::dump_file`]. The file is verified completely
    /// (checksum, format, schema version) before anything is written; then everything is
    /// inserted in one transaction. A store with no schema yet (new, or reset) is
    /// initialised first; a store that holds data is refused unless `force`, which first
    /// deletes every row.
    pub async fn load_file(&self, path: &Path, force: bool) -> Result<DumpStats> {
        let stats = verify_dump(path)?;
        // a store that does not exist yet is created (the dump is known good by now)
        if self.schema_status().await? == crate::SchemaStatus::Uninitialized {
            self.init().await?;
        }
        self.require_current_schema().await?;
        if !force && !self.is_empty().await? {
            return Err(StoreError::Dump("the store is not empty; refusing to load (use --force to replace its contents)".into()));
        }
        let reader = open_dump(path)?;
        let mut lines = reader.lines();
        let mut next_line =
            || -> Result<String> { lines.next().ok_or_else(|| StoreError::Dump("dump ended early".into()))?.map_err(io_err) };
        let header: serde_json::Value = serde_json::from_str(&next_line()?).map_err(|e| StoreError::Dump(e.to_string()))?;
        let absent = absent_tables(&header["schema_version"]).unwrap_or_default();
        let mut tx = self.begin_write().await?;
        for t in DERIVED_TABLES {
            sqlx::query(&format!("DELETE FROM {t}")).execute(&mut *tx).await?;
        }
        for t in TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", t.name)).execute(&mut *tx).await?;
        }
        for t in TABLES.iter().filter(|t| !absent.contains(&t.name)) {
            let head: serde_json::Value = serde_json::from_str(&next_line()?).map_err(|e| StoreError::Dump(e.to_string()))?;
            if head["table"] != t.name {
                return Err(StoreError::Dump(format!("expected table {} in dump, found {}", t.name, head["table"])));
            }
            let columns: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
            if head["columns"] != serde_json::json!(columns) {
                return Err(StoreError::Dump(format!("columns of table {} in the dump do not match this schema", t.name)));
            }
            let n = head["rows"].as_u64().ok_or_else(|| StoreError::Dump(format!("table {} header lacks a row count", t.name)))?;
            let mut batch: Vec<Vec<Arg>> = Vec::new();
            let insert_head = format!("INSERT INTO {} ({})", t.name, column_list(t));
            for i in 0..n {
                let row: serde_json::Value = serde_json::from_str(&next_line()?).map_err(|e| StoreError::Dump(e.to_string()))?;
                batch.push(row_args(t, i, &row)?);
                if batch.len() >= 2000 {
                    insert_rows(&mut tx, self.backend, &insert_head, "", t.columns.len(), &batch).await?;
                    batch.clear();
                }
            }
            insert_rows(&mut tx, self.backend, &insert_head, "", t.columns.len(), &batch).await?;
            if self.backend == Backend::Postgres && t.identity_id {
                sqlx::query(&format!(
                    "SELECT CAST(setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false) AS BIGINT)",
                    t.name
                ))
                .fetch_one(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(stats)
    }
}

fn row_args(t: &TableSpec, index: u64, row: &serde_json::Value) -> Result<Vec<Arg>> {
    let bad = |what: String| StoreError::Dump(format!("table {} row {}: {what}", t.name, index + 1));
    let values = row.as_array().ok_or_else(|| bad("not an array".into()))?;
    if values.len() != t.columns.len() {
        return Err(bad(format!("{} values for {} columns", values.len(), t.columns.len())));
    }
    t.columns
        .iter()
        .zip(values)
        .map(|((name, ty, nullable), v)| {
            if v.is_null() {
                return if *nullable {
                    Ok(match ty {
                        ColType::I64 => Arg::NullI64,
                        ColType::F64 => Arg::NullF64,
                        ColType::Text => Arg::NullText,
                    })
                } else {
                    Err(bad(format!("column {name} must not be null")))
                };
            }
            match ty {
                ColType::I64 => v.as_i64().map(Arg::I64),
                ColType::F64 => v.as_f64().map(Arg::F64),
                ColType::Text => v.as_str().map(Arg::from),
            }
            .ok_or_else(|| bad(format!("column {name} has a value of the wrong type")))
        })
        .collect()
}

fn open_dump(path: &Path) -> Result<BufReader<zstd::Decoder<'static, BufReader<File>>>> {
    let file = File::open(path).map_err(|e| StoreError::Dump(format!("cannot open {}: {e}", path.display())))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| StoreError::Dump(format!("{} is not a dump: {e}", path.display())))?;
    Ok(BufReader::new(decoder))
}

/// Check a dump file's checksum, header and trailer without touching any store.
pub fn verify_dump(path: &Path) -> Result<DumpStats> {
    let mut reader = open_dump(path)?;
    let mut hasher = Sha256::new();
    let mut line = Vec::new();
    let mut previous: Option<Vec<u8>> = None;
    let mut first = true;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::Dump(format!("{} is truncated or corrupt: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        if first {
            let header: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|_| StoreError::Dump(format!("{} is not an alchemiscale-rs dump", path.display())))?;
            if header["format"] != FORMAT {
                return Err(StoreError::Dump(format!("{} is not an alchemiscale-rs dump", path.display())));
            }
            if header["version"] != VERSION {
                return Err(StoreError::Dump(format!("dump format version {} is not supported", header["version"])));
            }
            if absent_tables(&header["schema_version"]).is_none() {
                return Err(StoreError::Dump(format!(
                    "dump has schema version {}; this binary loads versions 3 to {}",
                    header["schema_version"],
                    schema_version()
                )));
            }
            first = false;
        }
        if let Some(p) = previous.take() {
            hasher.update(&p);
        }
        previous = Some(line.clone());
    }
    let trailer = previous.ok_or_else(|| StoreError::Dump(format!("{} is empty", path.display())))?;
    let trailer: serde_json::Value =
        serde_json::from_slice(&trailer).map_err(|_| StoreError::Dump(format!("{} is truncated: no end marker", path.display())))?;
    if trailer["end"] != true {
        return Err(StoreError::Dump(format!("{} is truncated: no end marker", path.display())));
    }
    let want = trailer["sha256"].as_str().unwrap_or_default().to_string();
    let got = hex::encode(hasher.finalize());
    if want != got {
        return Err(StoreError::Dump(format!("{} fails its checksum (corrupt or altered)", path.display())));
    }
    Ok(DumpStats { tables: trailer["tables"].as_u64().unwrap_or(0) as usize, rows: trailer["rows"].as_u64().unwrap_or(0), sha256: got })
}
