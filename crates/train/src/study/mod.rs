//! A stability study: one config trained once per scaling mode and seed (same data order, same
//! initial weights for the parameters the modes share), then compared. Running the runs is the
//! caller's job (`scalelong study`); this module plans them, reads their records and writes the
//! report's numbers. Definitions: docs/stability.md.

pub mod grid;
pub mod paper;
pub mod quality;
pub mod report;
pub mod scan;

use crate::ConfigError;
use std::path::Path;

use scalelong_backbones::{Architecture, SkipScaling};

use crate::metrics::MetricsLine;
use crate::stability::{
    mean, mean_abs_relative_change, median, sig3, steps_to_reach, tail_mean, windowed_spread, Spread,
};
use crate::TrainConfig;

/// Records averaged for a "final" value, and the moving-average window for reaching a target.
pub const TAIL: usize = 5;
/// Window of the windowed spread (records).
pub const WINDOW: usize = 5;
/// A run whose final validation loss is at least this fraction of its first has stalled.
pub const STALLED: f64 = 0.9;

/// One run of a study.
#[derive(Debug, Clone)]
pub struct StudyRun {
    pub mode: SkipScaling,
    pub seed: u64,
    /// The grid cell: the axes' values this run takes (empty without a grid).
    pub cell: grid::Cell,
    /// Folder name: `[<cell tag>-]<mode>-seed<seed>` (`cs:0.5` becomes `cs0.5`).
    pub name: String,
    pub config: TrainConfig,
}

/// The runs of a study: for each cell of the grid `axes` (first axis slowest), `seeds` seeds (the
/// config's seed, +1, ...) for each mode, seed-major so an interrupted study has whole seeds done.
pub fn plan(
    base: &TrainConfig,
    axes: &[grid::Axis],
    modes: &[SkipScaling],
    seeds: usize,
) -> Result<Vec<StudyRun>, ConfigError> {
    if base.diagnostics.every == 0 {
        return Err("a study needs diagnostics: diagnostics.every must be > 0".into());
    }
    if modes.is_empty() || seeds == 0 {
        return Err("a study needs at least one mode and one seed".into());
    }
    let mut runs = Vec::new();
    for cell in grid::cells(axes) {
        let mut at = base.clone();
        for (key, value) in &cell {
            at.set(key, value).map_err(|e| format!("--set {key}={value}: {e}"))?;
        }
        for k in 0..seeds as u64 {
            for &mode in modes {
                let mut config = at.clone();
                config.model.set_scaling(mode);
                config.train.seed = base.train.seed + k;
                let seed = config.train.seed;
                let name = format!("{}{}-seed{seed}", grid::tag(&cell), mode.to_string().replace(':', ""));
                // Before any run trains: a mode this model cannot take fails the study now.
                config.validate().map_err(|e| format!("run {name}: {e}"))?;
                runs.push(StudyRun { mode, seed, cell: cell.clone(), name, config });
            }
        }
    }
    Ok(runs)
}

/// What a run's `metrics.jsonl` says of its end: the last step it records, and whether it
/// diverged ((0, false) when it cannot be read).
pub fn metrics_end(metrics: &Path) -> (u64, bool) {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    text.lines()
        .filter_map(|l| MetricsLine::parse(l).ok())
        .fold((0, false), |(s, d), m| (s.max(m.step), d || m.diverged))
}

/// The diagnostics series of one run, read back from its `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub mode: SkipScaling,
    pub seed: u64,
    /// The grid cell's label, `depth=12, lr=1e-3` (empty without a grid).
    pub cell: String,
    /// Steps with diagnostics, and the diagnostics series below.
    pub steps: Vec<u64>,
    pub feature_norm: Vec<f64>,
    pub grad_norm: Vec<f64>,
    pub loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    pub val_loss_ema: Vec<f64>,
    /// Mean over the probe times.
    pub robustness: Vec<f64>,
    /// Every block's output norm, per record.
    pub block_feature_norms: Vec<Vec<f64>>,
    /// (step, FID) of every line that carries one (`[eval]`), whether or not it has diagnostics.
    pub fid: Vec<(u64, f64)>,
    /// (step, KID mean over subsets) of every line that carries one.
    pub kid: Vec<(u64, f64)>,
    /// (step, loss) of every line: each step's loss when `log.every` is 1 (what loss spikes are
    /// counted on).
    pub all_loss: Vec<(u64, f64)>,
    /// Training images per second of every line without diagnostics or an evaluation (those
    /// intervals include their cost), or of every line when all have diagnostics.
    pub img_per_s: Vec<f64>,
    /// Steps skipped for a non-finite loss or gradient, by the last line.
    pub skipped: u64,
    /// The step where the run stopped for too many non-finite steps in a row.
    pub diverged_at: Option<u64>,
}

impl RunRecord {
    /// A run with no records yet.
    pub fn new(mode: SkipScaling, seed: u64) -> Self {
        Self {
            mode,
            seed,
            steps: vec![],
            feature_norm: vec![],
            grad_norm: vec![],
            loss: vec![],
            val_loss: vec![],
            val_loss_ema: vec![],
            robustness: vec![],
            block_feature_norms: vec![],
            fid: vec![],
            kid: vec![],
            cell: String::new(),
            all_loss: vec![],
            img_per_s: vec![],
            skipped: 0,
            diverged_at: None,
        }
    }

    /// Reads a run's `metrics.jsonl`; `cell` is its grid cell's label.
    pub fn read(path: &Path, mode: SkipScaling, seed: u64, cell: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = Self { cell: cell.to_string(), ..Self::new(mode, seed) };
        let mut all_speeds = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let m = MetricsLine::parse(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            r.fid.extend(m.fid.map(|f| (m.step, f)));
            r.kid.extend(m.kid.map(|k| (m.step, k)));
            r.skipped = m.skipped_total;
            if m.diverged {
                r.diverged_at = Some(m.step);
                continue;
            }
            r.all_loss.push((m.step, m.loss));
            all_speeds.push(m.img_per_s);
            if m.diagnostics.is_none() && m.fid.is_none() {
                r.img_per_s.push(m.img_per_s);
            }
            let Some(d) = m.diagnostics else { continue };
            if d.robustness.is_empty() {
                return Err(format!("{}:{}: `robustness` is empty", path.display(), i + 1).into());
            }
            r.steps.push(m.step);
            r.feature_norm.push(d.feature_norm);
            r.grad_norm.push(m.grad_norm);
            r.loss.push(m.loss);
            r.val_loss.push(d.val_loss);
            r.val_loss_ema.push(d.val_loss_ema);
            r.robustness.push(mean(&d.robustness));
            r.block_feature_norms.push(d.block_feature_norms);
        }
        if r.img_per_s.is_empty() {
            r.img_per_s = all_speeds; // every line had diagnostics
        }
        if r.steps.is_empty() && r.diverged_at.is_none() {
            return Err(format!("{}: no diagnostics records (diagnostics.every = 0?)", path.display()).into());
        }
        Ok(r)
    }

    /// Whether the run stopped for too many non-finite steps in a row.
    pub fn diverged(&self) -> bool {
        self.diverged_at.is_some()
    }

    /// Whether the run finished without learning: its final validation loss (current weights) is
    /// at least [`STALLED`] of its first record's (for the eps objective, predicting 0 scores 1).
    pub fn stalled(&self) -> bool {
        !self.diverged() && self.val_loss.first().is_some_and(|first| tail(&self.val_loss) >= STALLED * first)
    }
}

/// One mode's row of the study table, each value with its spread over seeds.
#[derive(Debug, Clone)]
pub struct ModeSummary {
    pub mode: SkipScaling,
    /// Mean of the last [`TAIL`] feature-norm records.
    pub final_feature_norm: Spread,
    /// The same divided by the baseline run's with the same seed (a paired comparison).
    pub feature_norm_ratio: Spread,
    /// Final norm of every block (mean of the last [`TAIL`] records), averaged over seeds.
    pub final_block_norms: Vec<f64>,
    /// Mean absolute relative change of the feature norm between records.
    pub feature_change: Spread,
    /// Windowed coefficient of variation of the feature norm.
    pub feature_spread: Spread,
    /// Mean absolute relative change of the gradient norm between records.
    pub grad_change: Spread,
    /// Mean of the last [`TAIL`] robustness records.
    pub robustness: Spread,
    /// Mean of the last [`TAIL`] EMA validation losses.
    pub final_val_loss: Spread,
    /// Steps until the moving average of the EMA validation loss reaches the baseline run's final
    /// value (same seed); runs that never reach it count as their last step.
    pub steps_to_target: Spread,
    /// Seeds that reached the target.
    pub reached: usize,
    /// Baseline steps over this mode's steps, per seed.
    pub speedup: Spread,
    /// Runs that stopped for non-finite losses or gradients, of `runs`.
    pub diverged: usize,
    /// Runs that finished without learning ([`RunRecord::stalled`]).
    pub stalled: usize,
    pub runs: usize,
    /// Loss spikes per run ([`scan::spikes`]).
    pub spikes: Spread,
    /// Median training images per second of each run (runs in parallel share the machine).
    pub img_per_s: Spread,
}

/// The runs of each mode, modes in the order they first appear.
pub fn by_mode(records: &[RunRecord]) -> Vec<(SkipScaling, Vec<&RunRecord>)> {
    let mut groups: Vec<(SkipScaling, Vec<&RunRecord>)> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|(m, _)| *m == r.mode) {
            Some((_, runs)) => runs.push(r),
            None => groups.push((r.mode, vec![r])),
        }
    }
    groups
}

/// Summarises the runs per mode (in the order the modes first appear), against `baseline`.
pub fn summarize(records: &[RunRecord], baseline: SkipScaling) -> Vec<ModeSummary> {
    let reach = |r: &RunRecord| -> Option<(Option<u64>, u64)> {
        let base = records.iter().find(|b| b.mode == baseline && b.seed == r.seed)?;
        let target = tail_mean(&base.val_loss_ema, TAIL);
        let base_steps = steps_to_reach(&base.steps, &base.val_loss_ema, target, TAIL)?;
        Some((steps_to_reach(&r.steps, &r.val_loss_ema, target, TAIL), base_steps))
    };
    by_mode(records)
        .into_iter()
        .map(|(mode, runs)| {
            let over = |f: &dyn Fn(&RunRecord) -> f64| Spread::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let reached: Vec<(Option<u64>, u64, u64)> =
                runs.iter().filter_map(|r| reach(r).and_then(|(s, b)| Some((s, b, *r.steps.last()?)))).collect();
            let steps: Vec<f64> = reached.iter().map(|(s, _, last)| s.unwrap_or(*last) as f64).collect();
            let speedup: Vec<f64> = reached.iter().map(|(s, b, last)| *b as f64 / s.unwrap_or(*last) as f64).collect();
            let ratio = |r: &RunRecord| {
                let base = records.iter().find(|b| b.mode == baseline && b.seed == r.seed);
                base.map_or(f64::NAN, |b| tail_mean(&r.feature_norm, TAIL) / tail_mean(&b.feature_norm, TAIL))
            };
            let blocks: Vec<Vec<f64>> = runs
                .iter()
                .map(|r| {
                    let tail = &r.block_feature_norms[r.block_feature_norms.len().saturating_sub(TAIL)..];
                    let width = tail.iter().map(Vec::len).min().unwrap_or(0);
                    (0..width).map(|k| mean(&tail.iter().map(|b| b[k]).collect::<Vec<_>>())).collect()
                })
                .collect();
            let width = blocks.iter().map(Vec::len).min().unwrap_or(0);
            ModeSummary {
                mode,
                final_feature_norm: over(&|r| tail_mean(&r.feature_norm, TAIL)),
                feature_norm_ratio: over(&ratio),
                final_block_norms: (0..width).map(|k| mean(&blocks.iter().map(|b| b[k]).collect::<Vec<_>>())).collect(),
                feature_change: over(&|r| mean_abs_relative_change(&r.feature_norm)),
                feature_spread: over(&|r| windowed_spread(&r.feature_norm, WINDOW)),
                grad_change: over(&|r| mean_abs_relative_change(&r.grad_norm)),
                robustness: over(&|r| tail_mean(&r.robustness, TAIL)),
                final_val_loss: over(&|r| tail_mean(&r.val_loss_ema, TAIL)),
                steps_to_target: Spread::of(&steps),
                reached: reached.iter().filter(|r| r.0.is_some()).count(),
                speedup: Spread::of(&speedup),
                diverged: runs.iter().filter(|r| r.diverged()).count(),
                stalled: runs.iter().filter(|r| r.stalled()).count(),
                runs: runs.len(),
                spikes: over(&|r| scan::spikes(&r.all_loss) as f64),
                img_per_s: over(&|r| median(&r.img_per_s)),
            }
        })
        .collect()
}

/// The study table as Markdown.
pub fn table(summaries: &[ModeSummary]) -> String {
    let mut s = String::from(
        "| mode | final feature norm | vs baseline, same seed | feature norm change | feature norm spread | grad norm change | robustness | final val loss (EMA) | steps to baseline's final val loss | reached | speed-up | diverged | stalled | loss spikes | img/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summaries {
        // Runs that never reached the target count as their last step: a bound, not a value.
        let bound = |sign: &str| if m.reached < m.steps_to_target.n { sign.to_string() } else { String::new() };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {}/{} | {}{} | {}/{} | {}/{} | {} | {} |\n",
            m.mode,
            m.final_feature_norm,
            m.feature_norm_ratio,
            m.feature_change,
            m.feature_spread,
            m.grad_change,
            m.robustness,
            m.final_val_loss,
            bound("≥ "),
            m.steps_to_target,
            m.reached,
            m.steps_to_target.n,
            bound("≤ "),
            m.speedup,
            m.diverged,
            m.runs,
            m.stalled,
            m.runs,
            m.spikes,
            m.img_per_s
        );
    }
    s
}

/// Final norm of every block per mode (mean over seeds), blocks named `in1..inN`, `mid`, `out1..outN`
/// in execution order for `n` encoder blocks (so `out1` merges the innermost skip).
pub fn block_table(summaries: &[ModeSummary], n: usize) -> String {
    let width = summaries.iter().map(|m| m.final_block_norms.len()).min().unwrap_or(0);
    let name = |k: usize| block_name(k, n);
    let mut s =
        format!("| mode | {} |\n|---|{}\n", (0..width).map(name).collect::<Vec<_>>().join(" | "), "---|".repeat(width));
    for m in summaries {
        let cells: Vec<String> = m.final_block_norms[..width].iter().map(|v| sig3(*v)).collect();
        s += &format!("| {} | {} |\n", m.mode, cells.join(" | "));
    }
    s
}

/// Block `k` of a backbone with `n` encoder blocks: `in1..inN`, `mid`, `out1..outN`.
pub fn block_name(k: usize, n: usize) -> String {
    match k.cmp(&n) {
        std::cmp::Ordering::Less => format!("in{}", k + 1),
        std::cmp::Ordering::Equal => "mid".to_string(),
        std::cmp::Ordering::Greater => format!("out{}", k - n),
    }
}

/// The "final" value of a series: the mean of its last [`TAIL`] records.
pub fn tail(y: &[f64]) -> f64 {
    tail_mean(y, TAIL)
}

/// Whether the final feature norms follow the paper's ordering, none > inv-sqrt2 > (ls and cs);
/// `None` unless all four modes are in the study.
pub fn paper_ordering_holds(summaries: &[ModeSummary]) -> Option<bool> {
    let norm = |mode: SkipScaling| summaries.iter().find(|m| m.mode == mode).map(|m| m.final_feature_norm.mean);
    let cs = summaries.iter().find(|m| matches!(m.mode, SkipScaling::Constant { .. }))?.final_feature_norm.mean;
    let (none, inv, ls) = (norm(SkipScaling::None)?, norm(SkipScaling::InvSqrt2)?, norm(SkipScaling::Learned)?);
    Some(none > inv && inv > ls && inv > cs)
}

/// The modes ordered by final feature norm, largest first, e.g. `none (2.1e4) > cs:0.5 (1.0e4)`.
pub fn feature_norm_ordering(summaries: &[ModeSummary]) -> String {
    let mut v: Vec<&ModeSummary> = summaries.iter().collect();
    v.sort_by(|a, b| b.final_feature_norm.mean.total_cmp(&a.final_feature_norm.mean));
    v.iter().map(|m| format!("{} ({})", m.mode, sig3(m.final_feature_norm.mean))).collect::<Vec<_>>().join(" > ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mode: SkipScaling, seed: u64, feature: &[f64], val: &[f64]) -> RunRecord {
        let n = feature.len();
        RunRecord {
            mode,
            seed,
            steps: (1..=n as u64).map(|k| 10 * k).collect(),
            feature_norm: feature.to_vec(),
            grad_norm: vec![1.0; n],
            loss: val.to_vec(),
            val_loss: val.to_vec(),
            val_loss_ema: val.to_vec(),
            robustness: vec![2.0; n],
            block_feature_norms: feature.iter().map(|f| vec![1.0, *f]).collect(),
            ..RunRecord::new(mode, seed)
        }
    }

    #[test]
    fn summary_by_hand() {
        let cs = SkipScaling::Constant { kappa: 0.5 };
        // Baseline: val loss ends at mean(last 5) = 0.5, first reached (moving average of 5) at
        // its last record, step 100. CS reaches it at step 50.
        let none_val = [1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.55, 0.5, 0.45, 0.4];
        let cs_val = [0.8, 0.6, 0.5, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2];
        let records = vec![
            record(SkipScaling::None, 1, &[2.0; 10], &none_val),
            record(cs, 1, &[1.0; 10], &cs_val),
            record(SkipScaling::None, 2, &[4.0; 10], &none_val),
            record(cs, 2, &[1.0; 10], &none_val),
        ];
        let s = summarize(&records, SkipScaling::None);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].mode, s[1].mode), (SkipScaling::None, cs));
        assert_eq!((s[0].final_feature_norm.mean, s[1].final_feature_norm.mean), (3.0, 1.0));
        assert_eq!(s[0].feature_change.mean, 0.0);
        assert_eq!((s[0].steps_to_target.mean, s[0].speedup.mean), (100.0, 1.0));
        // CS seed 1: moving average of 5 after step 40 is 0.55, after step 50 it is 0.48 <= 0.5.
        assert_eq!((s[1].steps_to_target.min, s[1].steps_to_target.max), (50.0, 100.0));
        assert_eq!((s[1].speedup.min, s[1].speedup.max, s[1].reached), (1.0, 2.0, 2));
        assert!(feature_norm_ordering(&s).starts_with("none (3.00) > cs:0.5 (1.00)"));
        // Paired by seed: 1/2 and 1/4.
        assert_eq!((s[1].feature_norm_ratio.min, s[1].feature_norm_ratio.max), (0.25, 0.5));
        let t = table(&s);
        assert!(
            t.contains("| cs:0.5 | 1.00 ± 0 | 0.375 ± 0.177 |")
                && t.contains("| 2/2 | 1.50 ± 0.707 | 0/2 | 0/2 | 0 ± 0 | n/a |"),
            "{t}"
        );
        assert_eq!(s[0].final_block_norms, vec![1.0, 3.0]);
        let b = block_table(&s, 0);
        assert!(b.contains("| mode | mid | out1 |") && b.contains("| none | 1.00 | 3.00 |"), "{b}");
    }

    #[test]
    fn plan_runs_every_mode_per_seed() {
        let text = "[model]\nimg_size = 8\npatch_size = 2\nin_chans = 1\nembed_dim = 16\ndepth = 2\nnum_heads = 2\n";
        let base = TrainConfig::from_toml(text, "test").unwrap();
        let modes: Vec<SkipScaling> = ["none", "cs"].iter().map(|m| m.parse().unwrap()).collect();
        let runs = plan(&base, &[], &modes, 2).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["none-seed1234", "cs0.5-seed1234", "none-seed1235", "cs0.5-seed1235"]);
        assert_eq!(runs[1].config.model.scaling(), modes[1]);
        let mut off = base.clone();
        off.diagnostics.every = 0;
        assert!(plan(&off, &[], &modes, 1).unwrap_err().to_string().contains("diagnostics.every"));
        // A grid: every cell, each with every seed and mode, the cell's values set.
        let axes = [grid::Axis::parse("model.depth=2,4").unwrap(), grid::Axis::parse("train.lr=1e-3,1e-2").unwrap()];
        let runs = plan(&base, &axes, &modes, 1).unwrap();
        assert_eq!(runs.len(), 8);
        assert_eq!(runs[3].name, "depth2-lr1e-2-cs0.5-seed1234");
        assert_eq!((runs[3].config.model.encoder_blocks(), runs[3].config.train.lr), (1, 1e-2));
        assert_eq!((runs[7].config.model.encoder_blocks(), runs[7].config.train.lr), (2, 1e-2));
        let bad = [grid::Axis::parse("train.lr=1e-3,fast").unwrap()];
        let err = plan(&base, &bad, &modes, 1).unwrap_err().to_string();
        assert!(err.contains("--set train.lr=fast"), "{err}");
        // A mode the model cannot take is refused before anything trains.
        let unet = "[model]\narch = \"unet2d\"\nsample_size = 8\nin_channels = 1\nout_channels = 1\nblock_out_channels = [8, 16]\nlayers_per_block = 1\ndown_block_types = [\"DownBlock2D\", \"DownBlock2D\"]\nup_block_types = [\"UpBlock2D\", \"UpBlock2D\"]\nnorm_num_groups = 4\n";
        let base = TrainConfig::from_toml(unet, "test").unwrap();
        let err = plan(&base, &[], &[SkipScaling::None, SkipScaling::Learned], 1).unwrap_err().to_string();
        assert!(err.contains("run ls-seed1234") && err.contains("use ls-per-skip"), "{err}");
    }
}
