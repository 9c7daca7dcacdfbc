//! `alchemiscale`: one binary for the servers, compute services, identity and database
//! administration, and benchmarks. See `alchemiscale --help` and README.md.

mod commands;
mod pyrepr;
mod store_args;

use clap::{Parser, Subcommand};

use commands::{
    bench::BenchCommand, database::DatabaseCommand, identity::IdentityCommand, server::ApiCommand, server::ComputeApiCommand,
    server::ServeCommand,
};
use store_args::DataDirArgs;

/// alchemiscale-rs: high-throughput execution of alchemical free energy calculations.
///
/// Wire-compatible with the alchemiscale 0.8 Python clients and compute services. The
/// embedded default keeps everything under the data directory (SQLite state store
/// state.db, local object store); PostgreSQL and S3 serve multi-node deployments.
#[derive(Debug, Parser)]
#[command(name = "alchemiscale", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    data: DataDirArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum ComputeCommand {
    /// Run the compute API (for deployments). Uses ALCHEMISCALE_COMPUTE_API_HOST,
    /// ALCHEMISCALE_COMPUTE_API_PORT and ALCHEMISCALE_COMPUTE_API_LOGLEVEL when the
    /// corresponding options are not given.
    Api(Box<ComputeApiCommand>),
    /// Run one compute service from a YAML settings file (exit 0 after a signal or a limit).
    Synchronous(commands::compute::SynchronousCommand),
    /// Run a compute manager: start compute services (local processes or Slurm jobs) to
    /// match the work waiting, up to a limit (exit 0 after a signal).
    Manager(commands::manager::ManagerCommand),
    /// Run one task's protocol natively (started by the compute service).
    #[command(hide = true)]
    Execute(commands::compute::ExecuteCommand),
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded all-in-one server: user API and compute API over the data
    /// directory's SQLite store; creates and migrates the store on first start, and on an
    /// empty store creates a user and a compute identity and prints how to connect.
    Serve(Box<ServeCommand>),
    /// Run the user-facing API (for deployments; see README.md).
    Api(Box<ApiCommand>),
    /// Compute side: the compute API, and compute services that claim and run tasks.
    #[command(subcommand)]
    Compute(ComputeCommand),
    /// Manage user, compute and admin identities and their scopes.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Create, check, reset, dump and load the state store.
    #[command(subcommand)]
    Database(DatabaseCommand),
    /// Run the strategist: execute the Strategies attached to networks, creating,
    /// actioning and cancelling their tasks (also runs inside `serve`).
    Strategist(Box<commands::strategist::StrategistCommand>),
    /// Measure performance on this machine (figures, not pass/fail).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// glibc's allocator raises its mmap threshold each time a large block is freed (up to
/// 32 MiB), after which freed buffers of a large upload's size class stay cached in every
/// thread's arena: the server then holds several times the memory it uses. A fixed
/// threshold returns blocks of 1 MiB and more to the system when they are freed (`bench
/// objects`: peak memory 3.8–4.3x a 50 MB result's size before, 1.6–1.8x after, at the
/// same speed within the noise).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // an invalid strategist settings file is a usage error (exit status 2), as for clap
    let strategist_settings = match &cli.command {
        Command::Strategist(cmd) => match commands::strategist::read_settings(cmd.config_file.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("Error: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        _ => None,
    };
    let manager_settings = match &cli.command {
        Command::Compute(ComputeCommand::Manager(cmd)) => match commands::manager::read_settings(cmd) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("Error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
        _ => None,
    };
    if !matches!(cli.command, Command::Serve(_) | Command::Api(_) | Command::Compute(_) | Command::Strategist(_)) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let data_dir = cli.data.data_dir.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(cmd) => commands::server::run_serve(*cmd, &data_dir).await,
            Command::Api(cmd) => commands::server::run_user_api(*cmd, &data_dir).await,
            Command::Compute(ComputeCommand::Api(cmd)) => commands::server::run_compute_api(*cmd, &data_dir).await,
            Command::Compute(ComputeCommand::Synchronous(cmd)) => commands::compute::run_synchronous(cmd).await,
            Command::Compute(ComputeCommand::Manager(cmd)) => commands::manager::run(cmd, manager_settings.expect("read above")).await,
            Command::Compute(ComputeCommand::Execute(cmd)) => commands::compute::run_execute(cmd).await,
            Command::Identity(cmd) => commands::identity::run(cmd, &data_dir).await,
            Command::Database(cmd) => commands::database::run(cmd, &data_dir).await,
            Command::Bench(cmd) => commands::bench::run(cmd).await,
            Command::Strategist(cmd) => {
                let (settings, warnings) = strategist_settings.expect("read above");
                commands::strategist::run(*cmd, &data_dir, settings, warnings).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
