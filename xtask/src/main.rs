//! Project chores: `cargo xtask ci` runs what CI runs (format, lints, tests); `cargo xtask bench`
//! measures training and sampling speed against PyTorch.

mod bench;

use std::process::Command;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use scalelong_backbones::ops::on_worker_thread;

#[derive(Parser)]
#[command(name = "xtask", about = "scalelong project chores")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check formatting, run clippy with warnings denied, and run the test suite (as .ci/run does).
    Ci,
    /// Time a training step and a sampling step per model and scaling mode, ours and PyTorch's.
    Bench(Box<bench::BenchArgs>),
    /// One bench case in a fresh process (used by `bench`).
    #[command(hide = true)]
    BenchCase { json: String },
    /// One FID Inception timing in this process (spawned by `bench --inception`).
    #[command(hide = true)]
    BenchInception { json: String },
    /// One square GEMM timing in this process (spawned by `bench --peak`).
    #[command(hide = true)]
    BenchGemm { json: String },
}

/// The allocator the `scalelong` binary uses, so the bench times what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args).status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    // As in the CLI: never hand freed memory back to the OS (option 15 = purge delay).
    // SAFETY: set before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    // As in the CLI: candle's pool does not spin after each op (it takes a core from our kernels).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    match Cli::parse().command {
        Task::Bench(args) => bench::run(*args),
        // As in the CLI: the timed work runs on a worker thread of the kernels' pool.
        Task::BenchCase { json } => on_worker_thread(|| bench::run_case(&json)),
        Task::BenchInception { json } => on_worker_thread(|| bench::run_inception_case(&json)),
        Task::BenchGemm { json } => on_worker_thread(|| bench::run_gemm_case(&json)),
        Task::Ci => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"])?;
            cargo(&["test", "--workspace", "--release"])?;
            cargo(&["test", "--release", "-p", "scalelong-data", "--features", "hub", "--test", "hub"])
        }
    }
}
