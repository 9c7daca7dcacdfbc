//! The `slurm` backend: one Slurm batch job per compute service.
//!
//! ```yaml
//! backend:
//!   kind: slurm
//!   partition: gpu            # each of these becomes an #SBATCH line when set
//!   time_limit: "04:00:00"
//!   cpus_per_task: 4
//!   gres: "gpu:1"
//!   mem: 16G
//!   account: chem
//!   extra_directives: ["--qos=normal", "--constraint=a100"]
//!   setup: |                  # shell lines run before the service (environment set-up)
//!     module load cuda/12
//!     export OPENMM_CPU_THREADS=4
//!   output: /scratch/alchemiscale/%x-%j.out   # default <work_dir>/slurm-%j.out
//!   script_template: /path/to/job.sh          # replaces the job script below
//!   job_name: alchemiscale-lab                # default alchemiscale-<manager name>
//!   sbatch: sbatch                            # the programs, if not on PATH
//!   squeue: squeue
//!   scancel: scancel
//! ```
//!
//! The job script (`<work_dir>/job.sh`, rewritten at each start) is the template with
//! `{job_name}`, `{output}`, `{directives}`, `{setup}` and `{command}` replaced; the
//! default template is [`DEFAULT_TEMPLATE`]. `{command}` is
//! `exec '<alchemiscale>' compute synchronous -c '<work_dir>/service.yaml'`: the work
//! directory and the program must be visible from the compute nodes (a shared file
//! system), and `exec` makes the service the job's main process, so `scancel` reaches it
//! with SIGTERM and it deregisters, giving its task back.
//!
//! Jobs are found with `squeue --name <job_name>`, so a restarted manager counts the jobs
//! of its predecessor. While any of them is pending, nothing new is submitted: pending
//! jobs are capacity already asked for, and a queue that does not move should not be
//! filled. `stop_all` is `scancel --name <job_name>`.

use std::path::PathBuf;

use serde::Deserialize;
use tracing::{debug, info};

use super::{run_program, Backend, BackendError, Census, LaunchSpec};
use crate::settings::{invalid, SettingsError};

/// The job script unless `script_template` names another.
pub const DEFAULT_TEMPLATE: &str =
    "#!/bin/bash\n#SBATCH --job-name={job_name}\n#SBATCH --output={output}\n{directives}\n{setup}\n{command}\n";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub time_limit: Option<String>,
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    #[serde(default)]
    pub gres: Option<String>,
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub extra_directives: Vec<String>,
    #[serde(default)]
    pub setup: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub script_template: Option<PathBuf>,
    #[serde(default)]
    pub job_name: Option<String>,
    #[serde(default = "defaults::sbatch")]
    pub sbatch: String,
    #[serde(default = "defaults::squeue")]
    pub squeue: String,
    #[serde(default = "defaults::scancel")]
    pub scancel: String,
}

mod defaults {
    pub fn sbatch() -> String {
        "sbatch".into()
    }
    pub fn squeue() -> String {
        "squeue".into()
    }
    pub fn scancel() -> String {
        "scancel".into()
    }
}

impl SlurmSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let one_line = |key: &'static str, v: &Option<String>| match v {
            Some(v) if v.trim().is_empty() || v.contains('\n') => Err(invalid(key, "must be one non-empty line")),
            _ => Ok(()),
        };
        one_line("partition", &self.partition)?;
        one_line("time_limit", &self.time_limit)?;
        one_line("gres", &self.gres)?;
        one_line("mem", &self.mem)?;
        one_line("account", &self.account)?;
        one_line("output", &self.output)?;
        if let Some(name) = &self.job_name {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ',') {
                return Err(invalid("job_name", "must be non-empty, without spaces or commas"));
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err(invalid("cpus_per_task", "must be a positive integer"));
        }
        if let Some(bad) = self.extra_directives.iter().find(|d| !d.starts_with('-') || d.contains('\n')) {
            return Err(invalid("extra_directives", format!("'{bad}' is not one sbatch option (like --qos=normal)")));
        }
        if let Some(path) = &self.script_template {
            let text =
                std::fs::read_to_string(path).map_err(|e| invalid("script_template", format!("cannot read {}: {e}", path.display())))?;
            if !text.contains("{command}") {
                return Err(invalid("script_template", format!("{} has no {{command}} placeholder", path.display())));
            }
        }
        Ok(())
    }
}

pub struct SlurmBackend {
    settings: SlurmSettings,
    job_name: String,
    script: PathBuf,
    last: Census,
}

/// `'…'` quoting for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl SlurmBackend {
    /// Writes the job script (`<work_dir>/job.sh`).
    pub fn new(spec: LaunchSpec, settings: SlurmSettings) -> Result<SlurmBackend, BackendError> {
        let job_name = settings.job_name.clone().unwrap_or_else(|| format!("alchemiscale-{}", spec.manager_name));
        let script = spec.work_dir.join("job.sh");
        let text = job_script(&spec, &settings, &job_name)?;
        std::fs::write(&script, text).map_err(|e| BackendError(format!("cannot write {}: {e}", script.display())))?;
        Ok(SlurmBackend { settings, job_name, script, last: Census::default() })
    }
}

/// The job script for `spec` (see the module documentation).
pub fn job_script(spec: &LaunchSpec, s: &SlurmSettings, job_name: &str) -> Result<String, BackendError> {
    let template = match &s.script_template {
        Some(p) => std::fs::read_to_string(p).map_err(|e| BackendError(format!("cannot read {}: {e}", p.display())))?,
        None => DEFAULT_TEMPLATE.to_string(),
    };
    let mut directives = Vec::new();
    for (option, value) in
        [("--partition", &s.partition), ("--time", &s.time_limit), ("--gres", &s.gres), ("--mem", &s.mem), ("--account", &s.account)]
    {
        if let Some(v) = value {
            directives.push(format!("#SBATCH {option}={v}"));
        }
    }
    if let Some(c) = s.cpus_per_task {
        directives.push(format!("#SBATCH --cpus-per-task={c}"));
    }
    directives.extend(s.extra_directives.iter().map(|d| format!("#SBATCH {d}")));
    let output = s.output.clone().unwrap_or_else(|| spec.work_dir.join("slurm-%j.out").display().to_string());
    let mut command = format!("exec {}", quote(&spec.program.display().to_string()));
    for arg in spec.args() {
        command.push(' ');
        command.push_str(&quote(&arg.to_string_lossy()));
    }
    Ok(template
        .replace("{job_name}", job_name)
        .replace("{output}", &output)
        .replace("{directives}", &directives.join("\n"))
        .replace("{setup}", s.setup.as_deref().unwrap_or(""))
        .replace("{command}", &command))
}

/// Parse `squeue -h -o "%i %T"` lines.
fn parse_squeue(out: &str) -> Census {
    let mut c = Census::default();
    for line in out.lines() {
        let Some((_, state)) = line.trim().split_once(' ') else { continue };
        match state.trim() {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => c.pending += 1,
            _ => c.running += 1,
        }
    }
    c
}

impl Backend for SlurmBackend {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    async fn census(&mut self) -> Result<Census, BackendError> {
        let args = ["--noheader".to_string(), format!("--name={}", self.job_name), "--format=%i %T".to_string()];
        let out = run_program(&self.settings.squeue, &args, "listing jobs").await?;
        self.last = parse_squeue(&out);
        debug!("squeue: {} running, {} pending", self.last.running, self.last.pending);
        Ok(self.last)
    }

    async fn start(&mut self, n: u64) -> Result<u64, BackendError> {
        if self.last.pending > 0 {
            info!("{} earlier jobs are still pending; submitting no more", self.last.pending);
            return Ok(0);
        }
        for i in 0..n {
            let args = ["--parsable".to_string(), self.script.display().to_string()];
            match run_program(&self.settings.sbatch, &args, "submitting a job").await {
                Ok(out) => info!("Submitted Slurm job {} ({})", out.trim().split(';').next().unwrap_or(""), self.job_name),
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    tracing::warn!("{e}");
                    return Ok(i);
                }
            }
        }
        Ok(n)
    }

    async fn stop_all(&mut self) -> Result<(), BackendError> {
        info!("Cancelling the Slurm jobs named {}", self.job_name);
        run_program(&self.settings.scancel, &[format!("--name={}", self.job_name)], "cancelling jobs").await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            program: PathBuf::from("/opt/it's/alchemiscale"),
            config: PathBuf::from("/shared/w/service.yaml"),
            work_dir: PathBuf::from("/shared/w"),
            manager_name: "lab".into(),
        }
    }

    fn settings(yaml: &str) -> SlurmSettings {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn default_script_has_every_directive_set() {
        let s = settings("partition: gpu\ntime_limit: '2:00:00'\ncpus_per_task: 4\ngres: gpu:1\nmem: 8G\naccount: chem\nextra_directives: [--qos=low]\nsetup: module load cuda\n");
        let text = job_script(&spec(), &s, "alchemiscale-lab").unwrap();
        for line in [
            "#!/bin/bash",
            "#SBATCH --job-name=alchemiscale-lab",
            "#SBATCH --output=/shared/w/slurm-%j.out",
            "#SBATCH --partition=gpu",
            "#SBATCH --time=2:00:00",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --mem=8G",
            "#SBATCH --account=chem",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --qos=low",
            "module load cuda",
            r"exec '/opt/it'\''s/alchemiscale' 'compute' 'synchronous' '-c' '/shared/w/service.yaml'",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        let bare = job_script(&spec(), &settings("{}"), "j").unwrap();
        assert!(!bare.contains("--partition") && !bare.contains("--time"), "{bare}");
    }

    #[test]
    fn templates_replace_placeholders_and_must_run_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.sh");
        std::fs::write(&t, "#!/bin/sh\n#SBATCH -J {job_name}\nsrun {command}\n").unwrap();
        let s = settings(&format!("script_template: {}\n", t.display()));
        s.validate().unwrap();
        let text = job_script(&spec(), &s, "x").unwrap();
        assert!(text.starts_with("#!/bin/sh\n#SBATCH -J x\nsrun exec '/opt/"), "{text}");
        std::fs::write(&t, "#!/bin/sh\necho nothing\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("{command}"));
        let missing = settings("script_template: /no/such/template\n");
        assert!(missing.validate().unwrap_err().to_string().contains("script_template"));
    }

    #[test]
    fn bad_values_are_refused() {
        for (yaml, key) in [
            ("partition: ''\n", "partition"),
            ("job_name: 'a b'\n", "job_name"),
            ("cpus_per_task: 0\n", "cpus_per_task"),
            ("extra_directives: ['qos=low']\n", "extra_directives"),
            ("mem: \"1G\\n#SBATCH --x\"\n", "mem"),
        ] {
            let e = settings(yaml).validate().unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn squeue_states_split_into_running_and_pending() {
        let c = parse_squeue("101 RUNNING\n102 PENDING\n103 COMPLETING\n104 CONFIGURING\n105 REQUEUED\n\n");
        assert_eq!(c, Census { running: 3, pending: 2 });
        assert_eq!(parse_squeue(""), Census::default());
    }
}
