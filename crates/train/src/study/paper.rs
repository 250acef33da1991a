//! The paper's feature-norm figure (the official code's README: U-ViT on CIFAR-10 after 30k
//! iterations, `../shared/REFERENCE.md`) and which of a study's blocks reads like it. The figure
//! does not say where it measures the "norm of feature"; its ratios between modes are what a
//! smaller model can be compared on.

use super::ModeSummary;
use scalelong_backbones::SkipScaling;

/// One panel of the figure: depth and the norm of feature per mode.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub depth: usize,
    pub none: f64,
    pub inv_sqrt2: f64,
    pub ls: f64,
    pub cs: f64,
}

pub const FIGURES: [Figure; 2] = [
    Figure { depth: 12, none: 2.0e4, inv_sqrt2: 1.4e4, ls: 1.1e4, cs: 1.0e4 },
    Figure { depth: 16, none: 5.5e4, inv_sqrt2: 3.7e4, ls: 2.2e4, cs: 2.5e4 },
];

/// The figure whose depth is nearest `depth` (U-ViT depth: 2 x long skips).
pub fn nearest(depth: usize) -> Figure {
    *FIGURES.iter().min_by_key(|f| f.depth.abs_diff(depth)).expect("two figures")
}

/// One block's final norms as ratios to `none` (inv-sqrt2, ls, cs), and their distance to the
/// figure's: the mean of |ln(ours / paper)| over the three ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub block: usize,
    pub ratios: [f64; 3],
    pub distance: f64,
    /// Whether the four modes are strictly ordered as in the figure.
    pub same_order: bool,
}

/// Every block's reading against `figure`, when the study has the four modes of the figure.
pub fn readings(summaries: &[ModeSummary], figure: &Figure) -> Option<Vec<Reading>> {
    let norms =
        |pred: &dyn Fn(&SkipScaling) -> bool| summaries.iter().find(|m| pred(&m.mode)).map(|m| &m.final_block_norms);
    let none = norms(&|m| *m == SkipScaling::None)?;
    let others = [
        norms(&|m| *m == SkipScaling::InvSqrt2)?,
        norms(&|m| *m == SkipScaling::Learned)?,
        norms(&|m| matches!(m, SkipScaling::Constant { .. }))?,
    ];
    let paper = [figure.inv_sqrt2 / figure.none, figure.ls / figure.none, figure.cs / figure.none];
    let width = others.iter().map(|o| o.len()).chain([none.len()]).min()?;
    let order = |v: [f64; 4]| {
        let mut idx = [0usize, 1, 2, 3];
        idx.sort_by(|a, b| v[*b].total_cmp(&v[*a]));
        idx
    };
    let paper_order = order([1.0, paper[0], paper[1], paper[2]]);
    Some(
        (0..width)
            .map(|k| {
                let ratios = [others[0][k] / none[k], others[1][k] / none[k], others[2][k] / none[k]];
                let distance = ratios.iter().zip(paper).map(|(r, p)| (r / p).ln().abs()).sum::<f64>() / 3.0;
                let ours = [1.0, ratios[0], ratios[1], ratios[2]];
                let same_order = paper_order.windows(2).all(|w| ours[w[0]] > ours[w[1]]);
                Reading { block: k, ratios, distance, same_order }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stability::Spread;

    fn summary(mode: SkipScaling, blocks: &[f64]) -> ModeSummary {
        let s = Spread::of(&[1.0]);
        ModeSummary {
            mode,
            final_feature_norm: s,
            feature_norm_ratio: s,
            final_block_norms: blocks.to_vec(),
            feature_change: s,
            feature_spread: s,
            grad_change: s,
            robustness: s,
            final_val_loss: s,
            steps_to_target: s,
            reached: 1,
            speedup: s,
            diverged: 0,
            stalled: 0,
            runs: 1,
            spikes: s,
            img_per_s: s,
        }
    }

    #[test]
    fn the_block_with_the_figures_ratios_is_nearest() {
        let f = nearest(13);
        assert_eq!(f.depth, 12);
        // Block 0: every mode the same; block 1: the figure's own numbers.
        let s = [
            summary(SkipScaling::None, &[5.0, 2.0e4]),
            summary(SkipScaling::InvSqrt2, &[5.0, 1.4e4]),
            summary(SkipScaling::Learned, &[5.0, 1.1e4]),
            summary(SkipScaling::Constant { kappa: 0.5 }, &[5.0, 1.0e4]),
        ];
        let r = readings(&s, &f).unwrap();
        assert!(r[1].distance < 1e-12 && r[1].same_order, "{r:?}");
        assert!(r[0].distance > 0.3 && !r[0].same_order, "{r:?}");
        assert!(readings(&s[..3], &f).is_none());
    }
}
