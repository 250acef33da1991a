//! `scalelong study`: one config trained once per long-skip scaling and seed, then a report with
//! the stability measures and plots (docs/stability.md).

use crate::device::{DeviceArg, DeviceOpts, DtypeArg};
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scalelong_backbones::SkipScaling;
use scalelong_train::stability::{mean, moving_average};
use scalelong_train::study::grid::{self, Axis};
use scalelong_train::study::scan::Outcome;
use scalelong_train::study::{self, RunRecord, StudyRun};
use scalelong_train::{checkpoint, Event, TrainConfig, Trainer};

use crate::heat_map::{heat_map, Axes as GridAxes, Panel};
use crate::plot::{line_chart, Curve};
use plotters::prelude::SeriesLabelPosition::{self, LowerRight, UpperLeft, UpperRight};

#[derive(Debug, Args)]
pub struct StudyArgs {
    /// Training config of every run (diagnostics.every must be > 0).
    #[arg(long)]
    config: PathBuf,
    /// Scalings to compare, comma-separated; the first is the baseline of the speed-up.
    #[arg(long, value_delimiter = ',', default_value = "none,inv-sqrt2,cs,ls")]
    modes: Vec<SkipScaling>,
    /// Seeds per mode: the config's train.seed, +1, ...
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Study folder: runs/<mode>-seed<seed>/, report.md and the PNG plots.
    #[arg(long)]
    out: PathBuf,
    /// Runs at once, each in its own process with its share of the cores (1 = in this process).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Optimizer steps per run (train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Any other config field: --set model.depth=16 for every run, or several values, a grid axis:
    /// --set model.depth=12,16,24 (repeatable; every combination of the axes is a cell of runs).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE[,VALUE...]")]
    sets: Vec<String>,
    /// Only (re)write the report from the runs already in --out.
    #[arg(long)]
    report_only: bool,
    /// Report title (default: the config's name).
    #[arg(long)]
    title: Option<String>,
    #[command(flatten)]
    device: DeviceOpts,
    /// Compute dtype of every run: f32, or bf16 / f16 on a GPU (master weights stay f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
}

pub fn run(args: &StudyArgs) -> Result<()> {
    let mut base = TrainConfig::read(&args.config)?;
    if let Some(n) = args.max_steps {
        base.set("train.max_steps", &n.to_string())?;
    }
    let mut axes = Vec::new();
    for set in &args.sets {
        let axis = Axis::parse(set)?;
        match axis.values.as_slice() {
            [one] => base.set(&axis.key, one).with_context(|| format!("--set {set}"))?,
            _ => axes.push(axis),
        }
    }
    let runs = study::plan(&base, &axes, &args.modes, args.seeds)?;
    let runs_dir = args.out.join("runs");
    std::fs::create_dir_all(&runs_dir).with_context(|| format!("creating {}", runs_dir.display()))?;
    std::fs::write(args.out.join("config.toml"), base.to_toml())
        .with_context(|| format!("writing {}/config.toml", args.out.display()))?;
    let started = Instant::now();
    if !args.report_only {
        let device = args.device.device()?;
        args.dtype.check(&device)?;
        let todo: Vec<&StudyRun> = runs.iter().filter(|r| !finished(&runs_dir.join(&r.name), &r.config)).collect();
        tracing::info!(runs = runs.len(), to_do = todo.len(), jobs = args.jobs, out = %args.out.display(), "study");
        if let Some(first) = todo.first() {
            if let Some(reference) = shared_reference(first, &args.out, &device)? {
                for r in &todo {
                    seed_reference(&reference, &runs_dir.join(&r.name))?;
                }
            }
        }
        if args.jobs <= 1 {
            for (k, r) in todo.iter().enumerate() {
                train_here(r, &runs_dir.join(&r.name), args, k + 1, todo.len())?;
            }
        } else {
            train_in_processes(&todo, &runs_dir, args)?;
        }
    }
    // Only finished runs are reported (a partial study, with --report-only, says what remains).
    let (done, pending): (Vec<&StudyRun>, Vec<&StudyRun>) =
        runs.iter().partition(|r| finished(&runs_dir.join(&r.name), &r.config));
    if done.is_empty() {
        bail!("no finished runs in {}", runs_dir.display());
    }
    let records = done
        .iter()
        .map(|r| RunRecord::read(&runs_dir.join(&r.name).join("metrics.jsonl"), r.mode, r.seed, &grid::label(&r.cell)))
        .collect::<Result<Vec<_>, _>>()?;
    let name = args.config.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let title = args.title.clone().unwrap_or(name);
    match axes.is_empty() {
        true => write_report(&args.out, &title, &base, args, &records, started.elapsed())?,
        false => write_grid_report(&args.out, &title, &base, &axes, args, &records, started.elapsed())?,
    }
    let report = args.out.join("report.md");
    if !pending.is_empty() {
        let names: Vec<&str> = pending.iter().map(|r| r.name.as_str()).collect();
        let note = format!(
            "\n## Not finished\n\n{} of {} runs are not in this report yet (resume with the same command): {}.\n",
            pending.len(),
            runs.len(),
            names.join(", ")
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(&report)?;
        std::io::Write::write_all(&mut f, note.as_bytes()).with_context(|| format!("writing {}", report.display()))?;
    }
    println!("wrote {}", report.display());
    Ok(())
}

/// A run is finished when its newest checkpoint is at `max_steps`, or when its metrics reach
/// `max_steps` (a committed study keeps them, not its checkpoints) or say it diverged.
fn finished(dir: &Path, config: &TrainConfig) -> bool {
    let (last, diverged) = study::metrics_end(&dir.join("metrics.jsonl"));
    diverged
        || last >= config.train.max_steps
        || checkpoint::list(&dir.join("checkpoints")).last().is_some_and(|(step, _)| *step >= config.train.max_steps)
}

/// With `[eval]` on and a dataset as its reference: the reference's Inception features, computed
/// once for the study (in `<out>/reference/`) instead of once per run.
fn shared_reference(first: &StudyRun, out: &Path, device: &Device) -> Result<Option<PathBuf>> {
    if first.config.eval.every == 0 {
        return Ok(None);
    }
    let dir = out.join("reference");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut trainer = Trainer::new(first.config.clone(), &dir, device, candle_core::DType::F32, false)
        .context("the FID reference")?;
    trainer.cache_reference().context("the FID reference")
}

/// Copies the study's reference features into a run folder that has none (a run checks that
/// they were made from its own reference before it uses them).
fn seed_reference(cache: &Path, run_dir: &Path) -> Result<()> {
    let to = run_dir.join(cache.file_name().unwrap_or_default());
    if !to.exists() {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        std::fs::copy(cache, &to).with_context(|| format!("copying {} to {}", cache.display(), to.display()))?;
    }
    Ok(())
}

fn diverged(dir: &Path) -> bool {
    study::metrics_end(&dir.join("metrics.jsonl")).1
}

fn train_here(r: &StudyRun, dir: &Path, args: &StudyArgs, k: usize, n: usize) -> Result<()> {
    let device = args.device.device()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("config.toml"), r.config.to_toml())
        .with_context(|| format!("writing {}/config.toml", dir.display()))?;
    let mut trainer = Trainer::new(r.config.clone(), dir, &device, args.dtype.dtype(), true)
        .with_context(|| format!("run {}", r.name))?;
    let bar = ProgressBar::new(r.config.train.max_steps).with_position(trainer.step());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("run {k}/{n}: {}", r.name));
    let end = trainer.run(&mut |e| {
        if let Event::Step(s) = e {
            bar.set_position(s.step);
        }
    });
    bar.finish();
    match end {
        // A diverged run is a result of the study, not a failure of it.
        Err(e) if diverged(dir) => tracing::warn!(run = %r.name, "diverged: {e}"),
        end => {
            end.with_context(|| format!("run {} ({})", r.name, dir.display()))?;
        }
    }
    Ok(())
}

/// Runs up to `jobs` `scalelong train --resume` processes at once, each on cores / jobs threads;
/// their output goes to `<run>/train.log`.
fn train_in_processes(todo: &[&StudyRun], runs_dir: &Path, args: &StudyArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the scalelong executable")?;
    // Resolved here, so every run computes on the same device.
    let device: DeviceArg = args.device.open()?.0;
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / args.jobs).max(1);
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs {msg}").expect("valid"));
    let mut queue = todo.iter();
    let mut running: Vec<(&StudyRun, Child)> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < args.jobs {
            let Some(r) = queue.next() else { break };
            let dir = runs_dir.join(&r.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("config.toml"), r.config.to_toml())?;
            let log = std::fs::File::create(dir.join("train.log"))?;
            // Continue a run that has a checkpoint; one that has none starts over.
            let start = match checkpoint::list(&dir.join("checkpoints")).is_empty() {
                true => "--overwrite",
                false => "--resume",
            };
            let child = Command::new(&exe)
                .args(["train", start, "--device", device.name(), "--dtype", args.dtype.name(), "--config"])
                .arg(dir.join("config.toml"))
                .arg("--run-dir")
                .arg(&dir)
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            running.push((r, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut still = Vec::new();
        for (r, mut child) in running {
            match child.try_wait()? {
                None => still.push((r, child)),
                Some(status) => {
                    bar.inc(1);
                    if !status.success() && diverged(&runs_dir.join(&r.name)) {
                        tracing::warn!(run = %r.name, "diverged");
                    } else if !status.success() {
                        failed.push(format!("{} (see {})", r.name, runs_dir.join(&r.name).join("train.log").display()));
                    }
                }
            }
        }
        running = still;
        bar.set_message(running.iter().map(|(r, _)| r.name.as_str()).collect::<Vec<_>>().join(", "));
    }
    bar.finish();
    if !failed.is_empty() {
        bail!("study runs failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Mean over seeds per mode of one series, with the min..max band.
fn curves(records: &[RunRecord], series: fn(&RunRecord) -> Vec<f64>) -> Vec<Curve> {
    study::by_mode(records)
        .into_iter()
        .map(|(mode, runs)| {
            let values: Vec<Vec<f64>> = runs.iter().map(|r| series(r)).collect();
            let len = values.iter().map(Vec::len).min().unwrap_or(0);
            let steps = &runs[0].steps;
            let at = |i: usize| values.iter().map(|v| v[i]).filter(|v| v.is_finite()).collect::<Vec<_>>();
            let points = (0..len).map(|i| (steps[i] as f64, mean(&at(i)))).filter(|p| p.1.is_finite()).collect();
            let band = (runs.len() > 1).then(|| {
                (0..len)
                    .filter_map(|i| {
                        let v = at(i);
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        (lo.is_finite() && hi.is_finite()).then_some((steps[i] as f64, lo, hi))
                    })
                    .collect()
            });
            Curve { label: mode.to_string(), points, band }
        })
        .collect()
}

/// The loss plot's title, which names the study's smoothing window.
const LOSS_TITLE: &str = "Training loss (moving average of 5 records)";
const _: () = assert!(study::WINDOW == 5, "LOSS_TITLE names the window");

/// (file, title, y axis, series, log y, where the legend goes).
type Plot = (&'static str, &'static str, &'static str, fn(&RunRecord) -> Vec<f64>, bool, SeriesLabelPosition);

fn write_report(
    out: &Path,
    title: &str,
    base: &TrainConfig,
    args: &StudyArgs,
    records: &[RunRecord],
    took: Duration,
) -> Result<()> {
    let baseline = args.modes[0];
    let summaries = study::summarize(records, baseline);
    let plots: [Plot; 5] = [
        (
            "feature_norm.png",
            "Norm of feature (last out-block)",
            "feature norm",
            |r| r.feature_norm.clone(),
            false,
            UpperLeft,
        ),
        ("grad_norm.png", "Global gradient norm", "gradient norm", |r| r.grad_norm.clone(), true, UpperRight),
        ("loss.png", LOSS_TITLE, "loss", |r| moving_average(&r.loss, study::WINDOW), true, UpperRight),
        ("val_loss.png", "Validation loss, EMA weights", "val loss", |r| r.val_loss_ema.clone(), true, UpperRight),
        (
            "robustness.png",
            "Input sensitivity ||f(x+d)-f(x)|| / ||d||",
            "robustness",
            |r| r.robustness.clone(),
            false,
            LowerRight,
        ),
    ];
    for (file, chart_title, y, series, log_y, legend) in &plots {
        line_chart(&out.join(file), chart_title, y, &curves(records, *series), *log_y, legend.clone())?;
    }
    let charts: Vec<(&str, &str)> = plots.iter().map(|p| (p.0, p.1)).collect();
    let took = (!args.report_only).then_some(took);
    let md = study::report::markdown(title, base, records, baseline, &summaries, &charts, took);
    let path = out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}

/// The grid's report: the heat maps of the first two axes (rows: the first, columns: the second;
/// one panel per mode, values averaged over seeds) and the report of every run and cell.
fn write_grid_report(
    out: &Path,
    title: &str,
    base: &TrainConfig,
    axes: &[Axis],
    args: &StudyArgs,
    records: &[RunRecord],
    took: Duration,
) -> Result<()> {
    type Measure = (&'static str, &'static str, fn(&Outcome) -> f64, bool);
    let measures: [Measure; 3] = [
        ("scan_val_loss.png", "Final validation loss (EMA weights)", |o| o.final_val_loss, true),
        ("scan_spikes.png", "Loss spikes per run", |o| o.spikes as f64, false),
        ("scan_norm_growth.png", "Feature norm growth (final / first record)", |o| o.norm_growth, true),
    ];
    let mut charts = Vec::new();
    if axes.len() <= 2 {
        let (rows, cols) = match axes {
            [x] => (None, x),
            [y, x] => (Some(y), x),
            _ => unreachable!("a grid report has one or two axes here"),
        };
        let y_labels = rows.map_or(vec![String::new()], |y| y.values.clone());
        let cell_of = |r: &RunRecord, i: usize, j: usize| {
            let mut cell: grid::Cell = rows.iter().map(|y| (y.key.clone(), y.values[i].clone())).collect();
            cell.push((cols.key.clone(), cols.values[j].clone()));
            r.cell == grid::label(&cell)
        };
        for (file, chart_title, measure, log) in measures {
            let panels: Vec<Panel> = study::by_mode(records)
                .into_iter()
                .map(|(mode, runs)| {
                    let at = |i: usize, j: usize| -> Vec<&RunRecord> {
                        runs.iter().copied().filter(|r| cell_of(r, i, j)).collect()
                    };
                    let value = |i: usize, j: usize| {
                        let v: Vec<f64> =
                            at(i, j).iter().map(|r| measure(&Outcome::of(r))).filter(|v| v.is_finite()).collect();
                        (!v.is_empty()).then(|| mean(&v))
                    };
                    let note = |i: usize, j: usize| {
                        let cell = at(i, j);
                        let count = |f: fn(&RunRecord) -> bool, word: &str| match cell.iter().filter(|r| f(r)).count() {
                            0 => None,
                            k if cell.len() == 1 && k == 1 => Some(word.to_string()),
                            k => Some(format!("{word} {k}/{}", cell.len())),
                        };
                        [count(RunRecord::diverged, "diverged"), count(RunRecord::stalled, "stalled")]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let (n, m) = (y_labels.len(), cols.values.len());
                    Panel { title: mode.to_string(), values: table_of(n, m, value), notes: table_of(n, m, note) }
                })
                .collect();
            let grid_axes = GridAxes {
                x_desc: cols.name(),
                x_labels: &cols.values,
                y_desc: rows.map_or("", |y| y.name()),
                y_labels: &y_labels,
            };
            heat_map(&out.join(file), chart_title, &grid_axes, &panels, log)?;
            charts.push((file, chart_title));
        }
    }
    let took = (!args.report_only).then_some(took);
    let md = study::report::grid_markdown(title, base, axes, records, args.modes[0], &charts, took);
    let path = out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
}

/// `f(i, j)` for every row `i < rows` and column `j < cols`.
fn table_of<T>(rows: usize, cols: usize, f: impl Fn(usize, usize) -> T) -> Vec<Vec<T>> {
    (0..rows).map(|i| (0..cols).map(|j| f(i, j)).collect()).collect()
}
