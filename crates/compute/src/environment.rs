//! The environment an executor runs in.
//!
//! The python executor runs as if its environment were activated: the interpreter's
//! directory comes first on `PATH` (so programs installed beside it — AmberTools'
//! `antechamber` and `sqm`, which openfe calls for partial charges — are found), and
//! `VIRTUAL_ENV` (a venv: `pyvenv.cfg` next to `bin/`) or `CONDA_PREFIX` (a conda
//! environment: `conda-meta/`) names it; `PYTHONHOME` is removed, as activation scripts
//! do. The interpreter is taken as configured, not with symlinks resolved: a venv's
//! `bin/python` is a link to the base interpreter, and it is the venv's `bin` that
//! matters. Then `executor_env` (a mapping in the settings) is applied to either executor,
//! last, so it can override anything (`OPENMM_CPU_THREADS`, `CUDA_VISIBLE_DEVICES`, …).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Variables to set and remove for a child.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    pub set: Vec<(OsString, OsString)>,
    pub remove: Vec<OsString>,
}

impl Environment {
    /// Apply to a command.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        for k in &self.remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.set {
            cmd.env(k, v);
        }
    }
}

/// `program` as the shell would find it: itself when it names a path, else the first
/// executable file of that name on `path` (the value of `PATH`).
pub fn locate(program: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    std::env::split_paths(path?).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The activation of the environment `python` belongs to, given the service's `PATH`.
pub fn python_activation(python: &Path, path: Option<&std::ffi::OsStr>) -> Environment {
    let mut env = Environment { remove: vec!["PYTHONHOME".into()], ..Environment::default() };
    let Some(interpreter) = locate(python, path) else { return env };
    let interpreter = std::path::absolute(&interpreter).unwrap_or(interpreter);
    let Some(bin) = interpreter.parent() else { return env };
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(path.map(|p| std::env::split_paths(p).filter(|d| d != bin).collect::<Vec<_>>()).unwrap_or_default());
    if let Ok(joined) = std::env::join_paths(dirs) {
        env.set.push(("PATH".into(), joined));
    }
    if let Some(prefix) = bin.parent() {
        if prefix.join("pyvenv.cfg").is_file() {
            env.set.push(("VIRTUAL_ENV".into(), prefix.into()));
        } else if prefix.join("conda-meta").is_dir() {
            env.set.push(("CONDA_PREFIX".into(), prefix.into()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(env: &'a Environment, key: &str) -> Option<&'a OsString> {
        env.set.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn executable(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_venv_comes_first_on_path_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        executable(&venv.join("bin/python"));
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let env = python_activation(&venv.join("bin/python"), Some("/usr/bin:/bin".as_ref()));
        let bin = venv.join("bin");
        assert_eq!(value(&env, "PATH").unwrap(), &std::env::join_paths([bin.as_path(), "/usr/bin".as_ref(), "/bin".as_ref()]).unwrap());
        assert_eq!(value(&env, "VIRTUAL_ENV").unwrap(), venv.as_os_str());
        assert_eq!(value(&env, "CONDA_PREFIX"), None);
        assert_eq!(env.remove, vec![OsString::from("PYTHONHOME")]);
        // already on PATH: moved to the front, not repeated
        let path = std::env::join_paths(["/usr/bin".as_ref(), bin.as_path()]).unwrap();
        let env = python_activation(&venv.join("bin/python"), Some(&path));
        assert_eq!(value(&env, "PATH").unwrap(), &std::env::join_paths([bin.as_path(), "/usr/bin".as_ref()]).unwrap());
    }

    #[test]
    fn a_conda_environment_is_named_and_a_bare_name_is_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let conda = dir.path().join("envs/openfe");
        executable(&conda.join("bin/python3"));
        std::fs::create_dir_all(conda.join("conda-meta")).unwrap();
        let path = std::env::join_paths([dir.path().join("nothing"), conda.join("bin")]).unwrap();
        let env = python_activation(Path::new("python3"), Some(&path));
        assert_eq!(value(&env, "CONDA_PREFIX").unwrap(), conda.as_os_str());
        assert_eq!(value(&env, "VIRTUAL_ENV"), None);
        let first = std::env::split_paths(value(&env, "PATH").unwrap()).next().unwrap();
        assert_eq!(first, conda.join("bin"));
        // not found anywhere: nothing but PYTHONHOME's removal
        let env = python_activation(Path::new("no-such-python"), Some(&path));
        assert!(env.set.is_empty());
    }
}
