//! Keeping each execution's output: the executor's standard output and error go to
//! `<task_logs_dir>/<task>.<start time>.stdout.log` and `….stderr.log`, which outlive the
//! task directory, so a protocol's own messages (a simulation engine's warnings, a
//! charge program's complaints) can be read after the task has failed or succeeded.
//!
//! The directory is bounded: after every execution, files older than `max_age` are
//! removed, then the oldest files until the rest fit in `max_bytes`. Only files named
//! like ours (`*.stdout.log`, `*.stderr.log`) are ever removed, so pointing
//! `task_logs_dir` at a directory that holds other things does not lose them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use alchemiscale_model::ScopedKey;
use chrono::{DateTime, Utc};

const SUFFIXES: [&str; 2] = [".stdout.log", ".stderr.log"];

/// Where kept output goes and how much of it may stay.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// The two output files of one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl OutputFiles {
    /// The files of an execution of `task` started at `started`, in `dir`.
    pub fn kept(dir: &Path, task: &ScopedKey, started: DateTime<Utc>) -> OutputFiles {
        let stem = format!("{task}.{}", started.format("%Y%m%dT%H%M%S%.6fZ"));
        OutputFiles { stdout: dir.join(format!("{stem}{}", SUFFIXES[0])), stderr: dir.join(format!("{stem}{}", SUFFIXES[1])) }
    }

    /// Output files inside `dir` (an execution whose output is not kept writes them in
    /// its task directory, which goes when the task is done).
    pub fn in_dir(dir: &Path) -> OutputFiles {
        OutputFiles { stdout: dir.join(crate::executor::STDOUT_FILE), stderr: dir.join(crate::executor::STDERR_FILE) }
    }
}

/// What a prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub files: usize,
    pub bytes: u64,
}

impl Limits {
    /// Remove kept output older than `max_age`, then the oldest until the rest fits in
    /// `max_bytes`. `now` is the time ages are measured from.
    pub fn prune(&self, now: SystemTime) -> std::io::Result<Pruned> {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            files.push((meta.modified().unwrap_or(now), meta.len(), entry.path()));
        }
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut pruned = Pruned::default();
        for (modified, len, path) in files {
            let too_old = now.duration_since(modified).unwrap_or_default() > self.max_age;
            if !too_old && total <= self.max_bytes {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    pruned.files += 1;
                    pruned.bytes += len;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
                Err(e) => return Err(e),
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: usize, age: Duration, now: SystemTime) {
        let path = dir.join(name);
        std::fs::write(&path, vec![b'x'; bytes]).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(now - age).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn file_names_name_the_task_and_the_start() {
        let task: ScopedKey = "Task-0123456789abcdef0123456789abcdef-org-camp-proj".parse().unwrap();
        let t = DateTime::parse_from_rfc3339("2026-12-04T21:33:01.5Z").unwrap().with_timezone(&Utc);
        let f = OutputFiles::kept(Path::new("/logs"), &task, t);
        assert_eq!(f.stdout, Path::new("/logs/Task-0123456789abcdef0123456789abcdef-org-camp-proj.20261204T213301.500000Z.stdout.log"));
        assert_eq!(f.stderr, Path::new("/logs/Task-0123456789abcdef0123456789abcdef-org-camp-proj.20261204T213301.500000Z.stderr.log"));
    }

    #[test]
    fn old_files_go_then_the_oldest_until_the_rest_fits() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let h = Duration::from_secs(3600);
        write(dir.path(), "a.stdout.log", 10, 50 * h, now); // too old
        write(dir.path(), "b.stderr.log", 100, 5 * h, now);
        write(dir.path(), "c.stdout.log", 100, 4 * h, now);
        write(dir.path(), "d.stderr.log", 100, 3 * h, now);
        write(dir.path(), "notes.txt", 1000, 100 * h, now); // not ours: never removed
        std::fs::create_dir(dir.path().join("sub.stdout.log")).unwrap(); // not a file
        let limits = Limits { dir: dir.path().to_path_buf(), max_bytes: 250, max_age: 48 * h };
        assert_eq!(limits.prune(now).unwrap(), Pruned { files: 2, bytes: 110 });
        assert_eq!(names(dir.path()), ["c.stdout.log", "d.stderr.log", "notes.txt", "sub.stdout.log"]);
        assert_eq!(limits.prune(now).unwrap(), Pruned::default(), "within limits: nothing more goes");
        let none = Limits { max_bytes: 0, ..limits };
        assert_eq!(none.prune(now).unwrap().files, 2);
        assert_eq!(names(dir.path()), ["notes.txt", "sub.stdout.log"]);
    }
}
