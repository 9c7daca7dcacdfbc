//! The strategist's result cache (`cache_directory`, `cache_size_limit`,
//! `use_local_cache`): result blobs as stored (zstd), one file per result key, evicted
//! least recently used first when the directory outgrows its limit. Results never change
//! under a key, so a cached blob is always current. Cache trouble (a full disk, a file
//! removed underneath) only costs a download.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
    limit: u64,
}

/// Result keys are `ProtocolDAGResult-<hex>`; anything else is not a file name we write.
fn safe(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ResultCache {
    /// A cache in `dir` (created) holding at most `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<ResultCache> {
        std::fs::create_dir_all(dir)?;
        Ok(ResultCache { dir: dir.to_path_buf(), limit })
    }

    /// upstream's default place: `$XDG_CACHE_HOME/alchemiscale-strategist`, else
    /// `~/.cache/alchemiscale-strategist`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x).join("alchemiscale-strategist"),
            None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache").join("alchemiscale-strategist"),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.zst"))
    }

    /// The cached blob, marked as just used.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        if !safe(key) {
            return None;
        }
        let path = self.path(key);
        let data = std::fs::read(&path).ok()?;
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(data)
    }

    /// Keep `data` under `key`, then evict the least recently used files past the limit.
    pub fn put(&self, key: &str, data: &[u8]) {
        if !safe(key) || data.len() as u64 > self.limit {
            return;
        }
        let partial = self.dir.join(format!(".{key}.{}.partial", std::process::id()));
        if std::fs::write(&partial, data).and_then(|_| std::fs::rename(&partial, self.path(key))).is_err() {
            let _ = std::fs::remove_file(&partial);
            return;
        }
        self.evict();
    }

    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.limit {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_results_within_the_limit_least_recently_used_out() {
        let dir = tempfile::tempdir().unwrap();
        let c = ResultCache::open(dir.path(), 250).unwrap();
        c.put("ProtocolDAGResult-a", &[1; 100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put("ProtocolDAGResult-b", &[2; 100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // using a makes b the least recently used
        assert_eq!(c.get("ProtocolDAGResult-a").unwrap(), vec![1; 100]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put("ProtocolDAGResult-c", &[3; 100]);
        assert!(c.get("ProtocolDAGResult-b").is_none());
        assert!(c.get("ProtocolDAGResult-a").is_some() && c.get("ProtocolDAGResult-c").is_some());
        // too large for the cache at all; unsafe names are never files
        c.put("ProtocolDAGResult-d", &[4; 300]);
        assert!(c.get("ProtocolDAGResult-d").is_none());
        c.put("../escape", &[5; 10]);
        assert!(c.get("../escape").is_none());
        assert!(!dir.path().parent().unwrap().join("escape.zst").exists());
    }
}
