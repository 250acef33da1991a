//! The study's report as Markdown: the recipe, the table, the per-block and per-run values and
//! the plots (drawn by the caller, listed here by file and title).

use std::time::Duration;

use super::grid::Axis;
use super::scan::{self, SPIKE_FACTOR, SPIKE_WINDOW};
use super::{
    block_table, feature_norm_ordering, paper_ordering_holds, table, tail, ModeSummary, RunRecord, TAIL, WINDOW,
};
use scalelong_backbones::{Architecture, SkipScaling};

use crate::stability::sig3;
use crate::TrainConfig;

/// The report of a study of `base` over `records`, summarised against `baseline`; `charts` are (file, title) of the plots beside
/// it; `took`, when given, is the wall-clock time of this invocation.
pub fn markdown(
    title: &str,
    base: &TrainConfig,
    records: &[RunRecord],
    baseline: SkipScaling,
    summaries: &[ModeSummary],
    charts: &[(&str, &str)],
    took: Option<Duration>,
) -> String {
    let mut md = format!("# Stability study: {title}\n\n");
    md += &recipe(base, records, baseline);
    md += &table(summaries);
    md += &format!("\nFinal feature norm, largest first: {}.\n", feature_norm_ordering(summaries));
    if let Some(holds) = paper_ordering_holds(summaries) {
        md += &format!(
            "The paper's ordering (none > inv-sqrt2 > both of ls and cs) {} in this study.\n",
            if holds { "holds" } else { "does not hold" }
        );
    }
    md += &format!(
        "\n## Final norm of every block\n\nMean over seeds of each block's output norm (mean of the last {} records), in execution order; `out1` merges the innermost skip, the last `out` block's norm is the feature norm above.\n\n",
        TAIL
    );
    md += &block_table(summaries, base.model.encoder_blocks());
    md += &paper_reading(summaries, base.model.encoder_blocks());
    md += "\n## Per run\n\n| run | final feature norm | final val loss (EMA) | robustness | diverged at | loss spikes |\n|---|---|---|---|---|---|\n";
    for r in records {
        md += &format!(
            "| {}, seed {} | {} | {} | {} | {} | {} |\n",
            r.mode,
            r.seed,
            sig3(tail(&r.feature_norm)),
            sig3(tail(&r.val_loss_ema)),
            sig3(tail(&r.robustness)),
            r.diverged_at.map_or("-".to_string(), |s| s.to_string()),
            super::scan::spikes(&r.all_loss)
        );
    }
    if let Some(quality) = super::quality::section(records, baseline) {
        md += &quality;
    }
    md += "\n## Plots\n\nMean over seeds; the shaded band is the min..max over seeds.\n\n";
    for (file, chart_title) in charts {
        md += &format!("![{chart_title}]({file})\n\n");
    }
    if let Some(took) = took {
        md += &format!("This invocation took {:.0} min.\n", took.as_secs_f64() / 60.0);
    }
    md
}

/// The report of a study over a grid (`axes`): every run's outcome, the heat maps `charts` (file,
/// title), then each cell's table against `baseline` in the order the cells first appear.
pub fn grid_markdown(
    title: &str,
    base: &TrainConfig,
    axes: &[Axis],
    records: &[RunRecord],
    baseline: SkipScaling,
    charts: &[(&str, &str)],
    took: Option<Duration>,
) -> String {
    let mut md = format!("# Stability scan: {title}\n\n");
    let grid: Vec<String> = axes.iter().map(|a| format!("`{}` in {{{}}}", a.key, a.values.join(", "))).collect();
    // The recipe below is the base config's: say that the grid's values replace its own.
    md += &format!(
        "The grid: {}, each replacing the base config's value in the recipe below; every other setting as there.\n\n",
        grid.join(" x ")
    );
    md += &recipe(base, records, baseline);
    md += &format!(
        "A loss spike is a loss record above {SPIKE_FACTOR} x the median of the {SPIKE_WINDOW} records before it; \
feature norm growth is the final feature norm over the first record's; a diverged run stopped after \
`train.max_nonfinite` non-finite steps in a row.\n\n## Every run\n\n"
    );
    md += &scan::table(records);
    md += "\n";
    for (file, chart_title) in charts {
        md += &format!("![{chart_title}]({file})\n\n");
    }
    md += "## Per cell\n";
    let mut cells: Vec<&str> = Vec::new();
    for r in records {
        if !cells.contains(&r.cell.as_str()) {
            cells.push(&r.cell);
        }
    }
    for cell in cells {
        let runs: Vec<RunRecord> = records.iter().filter(|r| r.cell == cell).cloned().collect();
        md += &format!("\n### {cell}\n\n");
        md += &table(&super::summarize(&runs, baseline));
        if let Some(quality) = super::quality::section(&runs, baseline) {
            md += &quality;
        }
    }
    if let Some(took) = took {
        md += &format!("\nThis invocation took {:.0} min.\n", took.as_secs_f64() / 60.0);
    }
    md
}

/// Which block's final norms, as ratios to `none`, are nearest the paper's figure (empty unless the
/// study has none, inv-sqrt2, ls and cs).
fn paper_reading(summaries: &[ModeSummary], n: usize) -> String {
    let figure = super::paper::nearest(2 * n);
    let Some(mut readings) = super::paper::readings(summaries, &figure) else { return String::new() };
    readings.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    let mut md = format!(
        "\n### Which block reads like the paper's figure\n\nThe paper's figure (U-ViT depth {d} on CIFAR-10, 30k iterations) has \
inv-sqrt2, LS and CS at {:.2}, {:.2} and {:.2} of `none`'s norm of feature. Each block's final norms as the same ratios, \
nearest first (distance: mean |ln(ours / paper)| over the three ratios; order: the four modes strictly in the figure's order):\n\n\
| block | inv-sqrt2 / none | ls / none | cs / none | distance | same order |\n|---|---|---|---|---|---|\n",
        figure.inv_sqrt2 / figure.none,
        figure.ls / figure.none,
        figure.cs / figure.none,
        d = figure.depth,
    );
    for r in readings {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            super::block_name(r.block, n),
            sig3(r.ratios[0]),
            sig3(r.ratios[1]),
            sig3(r.ratios[2]),
            sig3(r.distance),
            if r.same_order { "yes" } else { "no" }
        );
    }
    md
}

/// The recipe paragraph: model, data, optimiser, seeds, diagnostics, and what the values mean.
fn recipe(base: &TrainConfig, records: &[RunRecord], baseline: SkipScaling) -> String {
    let m = &base.model;
    let t = &base.train;
    let d = &base.diagnostics;
    let seeds: Vec<String> = {
        let mut s: Vec<u64> = records.iter().map(|r| r.seed).collect();
        s.dedup();
        s.sort();
        s.dedup();
        s.iter().map(|s| s.to_string()).collect()
    };
    let mut md = format!(
        "{model}; data `{data}`; \
batch {b}, {steps} steps, AdamW lr {lr} (warm-up {warm}), betas ({b1}, {b2}), weight decay {wd}, gradient clip {clip}, \
EMA {ema}; seeds {seeds}. Diagnostics every {every} steps; validation batch of {vi} images from `{val}`; \
robustness at t = {pt:?} with {pi} images, perturbation std {eps}.\n\n",
        model = m.describe(),
        data = base.data.spec,
        b = t.batch_size,
        steps = t.max_steps,
        lr = t.lr,
        warm = t.warmup_steps,
        b1 = t.beta1,
        b2 = t.beta2,
        wd = t.weight_decay,
        clip = if t.grad_clip > 0.0 { t.grad_clip.to_string() } else { "off".into() },
        ema = t.ema_decay,
        seeds = seeds.join(", "),
        every = d.every,
        vi = d.val_images,
        val = if d.val_data.is_empty() { "the training data" } else { &d.val_data },
        pt = d.probe_t,
        pi = d.probe_images,
        eps = d.probe_eps,
    );
    md += &format!(
        "Every value is mean ± sample standard deviation over the seeds. Baseline of the speed-up: `{baseline}`. \
Definitions in the scalelong repository's docs/stability.md \
(\"final\" = mean of the last {tail} records; change = mean absolute relative change between records; \
spread = coefficient of variation in windows of {win} records).\n\n",
        tail = TAIL,
        win = WINDOW
    );
    md
}
