//! The study's sample-quality section: FID per mode and seed at every evaluated step, and the
//! steps each mode needs to reach the baseline's final FID (the paper's speed-up, judged by FID).

use scalelong_backbones::SkipScaling;

use super::{by_mode, RunRecord};
use crate::stability::{sig3, Spread};

/// The first evaluated step whose FID is at most `target`.
fn steps_to_fid(fid: &[(u64, f64)], target: f64) -> Option<u64> {
    fid.iter().find(|(_, f)| *f <= target).map(|(s, _)| *s)
}

fn final_fid(r: &RunRecord) -> f64 {
    r.fid.last().map_or(f64::NAN, |f| f.1)
}

/// The run's lowest FID: where the baseline breaks part-way, its best FID is the quality it did
/// reach, and the steps to it are the paper's speed-up measured before the break.
fn best_fid(r: &RunRecord) -> f64 {
    r.fid.iter().map(|f| f.1).fold(f64::NAN, f64::min)
}

/// Per run of a mode, paired with the baseline of its seed: (first step at or below the baseline's
/// `target` FID, the baseline's own first step there, the run's last evaluated step).
fn paired_steps(
    runs: &[&RunRecord],
    records: &[RunRecord],
    baseline: SkipScaling,
    target: fn(&RunRecord) -> f64,
) -> Vec<(Option<u64>, u64, u64)> {
    runs.iter()
        .filter_map(|r| {
            let base = records.iter().find(|b| b.mode == baseline && b.seed == r.seed)?;
            let base_steps = steps_to_fid(&base.fid, target(base))?;
            Some((steps_to_fid(&r.fid, target(base)), base_steps, r.fid.last()?.0))
        })
        .collect()
}

/// "steps | reached | speed-up" cells; runs that never reach the target count as their last
/// evaluated step, so the steps are a lower and the speed-up an upper bound.
fn speedup_cells(paired: &[(Option<u64>, u64, u64)]) -> String {
    let steps: Vec<f64> = paired.iter().map(|(s, _, end)| s.unwrap_or(*end) as f64).collect();
    let speedup: Vec<f64> = paired.iter().map(|(s, b, end)| *b as f64 / s.unwrap_or(*end) as f64).collect();
    let reached = paired.iter().filter(|p| p.0.is_some()).count();
    let bound = |sign: &'static str| if reached < paired.len() { sign } else { "" };
    format!(
        "{}{} | {reached}/{} | {}{}",
        bound("≥ "),
        Spread::of(&steps),
        paired.len(),
        bound("≤ "),
        Spread::of(&speedup)
    )
}

/// Markdown for the runs' FID records; `None` when no run evaluated FID (`[eval] every = 0`).
pub fn section(records: &[RunRecord], baseline: SkipScaling) -> Option<String> {
    if records.iter().all(|r| r.fid.is_empty()) {
        return None;
    }
    let mut md = String::from("\n## Sample quality (FID)\n\n");
    md += &format!(
        "FID of the EMA weights' samples ([eval]); steps to the baseline's final FID (`{baseline}`, same seed) \
are the first evaluated step at or below it; runs that never reach it count as their last evaluated step.\n\n\
| mode | final FID | minus baseline's, same seed | final KID | steps to baseline's final FID | reached | speed-up |\n|---|---|---|---|---|---|---|\n"
    );
    for (mode, runs) in by_mode(records) {
        let base_of = |r: &RunRecord| records.iter().find(|b| b.mode == baseline && b.seed == r.seed);
        let minus_base: Vec<f64> =
            runs.iter().map(|r| base_of(r).map_or(f64::NAN, |b| final_fid(r) - final_fid(b))).collect();
        let kid: Vec<f64> = runs.iter().map(|r| r.kid.last().map_or(f64::NAN, |k| k.1)).collect();
        md += &format!(
            "| {mode} | {} | {} | {} | {} |\n",
            Spread::of(&runs.iter().map(|r| final_fid(r)).collect::<Vec<_>>()),
            Spread::of(&minus_base),
            Spread::of(&kid),
            speedup_cells(&paired_steps(&runs, records, baseline, final_fid)),
        );
    }
    md += &format!(
        "\nWhere runs break part-way the final FID says who survived, not who learned faster. The best \
(lowest) FID each run reached, and the steps to the best FID the baseline (`{baseline}`, same seed) \
reached:\n\n| mode | best FID | steps to baseline's best FID | reached | speed-up |\n|---|---|---|---|---|\n"
    );
    for (mode, runs) in by_mode(records) {
        md += &format!(
            "| {mode} | {} | {} |\n",
            Spread::of(&runs.iter().map(|r| best_fid(r)).collect::<Vec<_>>()),
            speedup_cells(&paired_steps(&runs, records, baseline, best_fid)),
        );
    }
    md += &at_steps(records);
    md += "\n| run | FID at step |\n|---|---|\n";
    for r in records {
        let cells: Vec<String> = r.fid.iter().map(|(s, f)| format!("{s}: {}", sig3(*f))).collect();
        md += &format!("| {}, seed {} | {} |\n", r.mode, r.seed, cells.join(", "));
    }
    Some(md)
}

/// FID per mode at each evaluated step (mean ± std over the runs evaluated there, and how many):
/// where runs break part-way, the final FID alone hides when.
fn at_steps(records: &[RunRecord]) -> String {
    let mut steps: Vec<u64> = records.iter().flat_map(|r| r.fid.iter().map(|f| f.0)).collect();
    steps.sort_unstable();
    steps.dedup();
    let head: Vec<String> = steps.iter().map(|s| format!("step {s}")).collect();
    let mut md = format!("\n| mode | {} |\n|---|{}\n", head.join(" | "), "---|".repeat(steps.len()));
    for (mode, runs) in by_mode(records) {
        let cells: Vec<String> = steps
            .iter()
            .map(|s| {
                let at: Vec<f64> = runs.iter().filter_map(|r| r.fid.iter().find(|f| f.0 == *s).map(|f| f.1)).collect();
                format!("{} (n={})", Spread::of(&at), at.len())
            })
            .collect();
        md += &format!("| {mode} | {} |\n", cells.join(" | "));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: SkipScaling, seed: u64, fid: &[(u64, f64)]) -> RunRecord {
        RunRecord { fid: fid.to_vec(), ..RunRecord::new(mode, seed) }
    }

    #[test]
    fn steps_to_the_baselines_final_fid() {
        let cs = SkipScaling::Constant { kappa: 0.5 };
        let records = [
            run(SkipScaling::None, 0, &[(100, 90.0), (200, 50.0), (300, 40.0)]),
            run(cs, 0, &[(100, 80.0), (200, 39.0), (300, 30.0)]),
        ];
        let md = section(&records, SkipScaling::None).unwrap();
        // none reaches its own final FID (40) at 300; cs at 200: speed-up 1.5.
        assert!(md.contains("| none | 40.0 ± 0 | 0 ± 0 | n/a | 300 ± 0 | 1/1 | 1.00 ± 0 |"), "{md}");
        assert!(md.contains("| cs:0.5 | 30.0 ± 0 | -10.0 ± 0 | n/a | 200 ± 0 | 1/1 | 1.50 ± 0 |"), "{md}");
        assert!(md.contains("| cs:0.5, seed 0 | 100: 80.0, 200: 39.0, 300: 30.0 |"), "{md}");
        assert!(md.contains("| mode | step 100 | step 200 | step 300 |"), "{md}");
        assert!(md.contains("| none | 90.0 ± 0 (n=1) | 50.0 ± 0 (n=1) | 40.0 ± 0 (n=1) |"), "{md}");
        assert!(section(&[run(SkipScaling::None, 0, &[])], SkipScaling::None).is_none());
    }

    #[test]
    fn steps_to_the_baselines_best_fid_when_it_breaks() {
        let cs = SkipScaling::Constant { kappa: 0.5 };
        let ls = SkipScaling::LearnedPerSkip;
        let records = [
            // none reaches 50 at 300, then breaks; cs gets there at 200; ls never does.
            run(SkipScaling::None, 0, &[(100, 90.0), (200, 70.0), (300, 50.0), (400, 390.0)]),
            run(cs, 0, &[(100, 80.0), (200, 45.0), (300, 40.0), (400, 38.0)]),
            run(ls, 0, &[(100, 95.0), (200, 380.0), (300, 385.0), (400, 388.0)]),
        ];
        let md = section(&records, SkipScaling::None).unwrap();
        assert!(md.contains("| none | 50.0 ± 0 | 300 ± 0 | 1/1 | 1.00 ± 0 |"), "{md}");
        assert!(md.contains("| cs:0.5 | 38.0 ± 0 | 200 ± 0 | 1/1 | 1.50 ± 0 |"), "{md}");
        assert!(md.contains("| ls-per-skip | 95.0 ± 0 | ≥ 400 ± 0 | 0/1 | ≤ 0.750 ± 0 |"), "{md}");
        // By the final FID every mode "reaches" the broken baseline's 390 at once.
        assert!(md.contains("| cs:0.5 | 38.0 ± 0 | -352 ± 0 | n/a | 100 ± 0 | 1/1 | 1.00 ± 0 |"), "{md}");
    }
}
