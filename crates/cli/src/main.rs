//! `scalelong`: train, sample and inspect diffusion models with scaled long skip connections.

mod device;
mod export;
mod fid;
mod heat_map;
mod info;
mod model_spec;
mod output;
mod plot;
mod sample;
mod sample_out;
mod study;
mod train;

use anyhow::Result;

/// candle allocates a fresh buffer for every op; glibc's malloc hands large ones back to the
/// kernel each time, and the page faults cost more than the arithmetic. mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "scalelong",
    version,
    about = "Diffusion models with scaled long skip connections (ScaleLong), on Candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a U-ViT (with no arguments: the embedded MNIST on a small CPU recipe).
    Train(train::TrainArgs),
    /// Sample images from a checkpoint (ours, official U-ViT weights or a diffusers UNet): a grid,
    /// one PNG per image, or an .npz for evaluators.
    Sample(sample::SampleArgs),
    /// Write a training checkpoint's weights for diffusers (UNet) or the official code (U-ViT).
    Export(export::ExportArgs),
    /// Print a model's parameter counts per module and the coefficient of each long skip.
    Info(info::InfoArgs),
    /// Train one config per long-skip scaling and seed, then report stability and speed-up.
    Study(study::StudyArgs),
    /// Plot a metric from one or more metrics.jsonl files as a PNG.
    Plot(plot::PlotArgs),
    /// FID and KID between two sides: image folders, statistics (.npz), datasets or checkpoints.
    Fid(fid::FidArgs),
    /// Write pytorch-fid statistics (mu, sigma) of images, a dataset or a checkpoint's samples.
    FidStats(fid::FidStatsArgs),
}

/// `mi_option_purge_delay` in mimalloc's option enum (v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// candle's spin-wait limit for its thread pool; a value the user set wins.
const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

fn main() {
    // Errors are messages; backtraces are for panics. Rust users often set RUST_BACKTRACE=1, which
    // makes candle attach a backtrace to every error; RUST_LIB_BACKTRACE=0 keeps them off errors
    // while panics still get theirs. An explicit RUST_LIB_BACKTRACE wins.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // Never hand freed memory back to the OS: a training step frees and reallocates the same
    // buffers, and re-faulting them cost about 15% of a CPU step here.
    // SAFETY: setting an allocator option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Piped into `head` and the like: end quietly as other Unix tools do when the reader goes away,
    // instead of panicking on the next print.
    // SAFETY: restoring a signal's default disposition before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL)
    };
    // candle's element-wise thread pool spins for a while after each op; beside the rayon threads
    // of our CPU kernels that takes a core from them (3-5% of a UNet step on two cores).
    if std::env::var_os(SPIN_LIMIT).is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var(SPIN_LIMIT, "0") };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // The kernels' callers on a worker thread of their pool (no hand-off per op).
    if let Err(e) = scalelong_backbones::ops::on_worker_thread(|| run(cli)) {
        if let Some(train::Interrupted(code)) = e.downcast_ref() {
            std::process::exit(*code);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Fid(args) => fid::run(&args),
        Command::FidStats(args) => fid::run_stats(&args),
        Command::Study(args) => study::run(&args),
    }
}
