//! Stability diagnostics on a tiny run: the records exist, have the documented shapes and obey the
//! relations their definitions imply.

use candle_core::{DType, Device, Tensor};
use scalelong_backbones::{Architecture, SkipScaling};
use scalelong_train::diagnostics::{block_grad_norms, mean_sample_norm, Diagnostics};
use scalelong_train::{Event, TrainConfig, Trainer};

fn tiny(scaling: &str) -> TrainConfig {
    let mut cfg = TrainConfig::from_toml(
        r#"
[model]
img_size = 8
patch_size = 2
in_chans = 1
embed_dim = 16
depth = 4
num_heads = 2
[train]
batch_size = 8
max_steps = 4
warmup_steps = 1
lr = 1e-3
[checkpoint]
every = 0
keep = 1
[log]
every = 100
[sample]
every = 0
n = 4
steps = 2
[diagnostics]
every = 2
val_images = 6
probe_images = 3
probe_t = [0.2, 0.8]
"#,
        "test",
    )
    .unwrap();
    cfg.set("model.scaling", &format!("\"{scaling}\"")).unwrap();
    cfg
}

/// Trains the tiny config; returns the diagnostics of each step that had them.
fn diagnostics(cfg: TrainConfig) -> Vec<(u64, Diagnostics)> {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(cfg, dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let mut seen = Vec::new();
    t.run(&mut |e| {
        if let Event::Step(r) = e {
            if let Some(d) = &r.diagnostics {
                seen.push((r.step, d.clone()));
            }
        }
    })
    .unwrap();
    // The same records are in metrics.jsonl, although log.every is larger than the run.
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let logged: Vec<f64> = lines.iter().filter_map(|v| v["feature_norm"].as_f64()).collect();
    assert_eq!(logged.len(), seen.len());
    for (l, (_, d)) in logged.iter().zip(&seen) {
        assert!((l - d.feature_norm).abs() <= 1e-12 * d.feature_norm, "{l} vs {}", d.feature_norm);
    }
    seen
}

#[test]
fn records_have_the_documented_shape_and_relations() {
    let records = diagnostics(tiny("cs:0.5"));
    assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 4]);
    for (_, d) in &records {
        // depth 4: 2 in-blocks, a mid-block, 2 out-blocks, so 2 long skips.
        assert_eq!((d.block_feature_norms.len(), d.skip_norms.len(), d.block_grad_norms.len()), (5, 2, 5));
        assert_eq!(d.feature_norm, *d.block_feature_norms.last().unwrap());
        // Skip i is the output of in-block i, and CS scales it by 0.5^(i-1).
        assert_eq!(d.skip_norms, d.block_feature_norms[..2]);
        for (i, (s, scaled)) in d.skip_norms.iter().zip(&d.scaled_skip_norms).enumerate() {
            let want = s * 0.5f64.powi(i as i32);
            assert!((scaled - want).abs() <= 1e-5 * want, "skip {}: {scaled} vs {want}", i + 1);
        }
        assert!(d.gates.is_empty());
        assert!(d.block_grad_norms.iter().all(|g| g.is_finite() && *g > 0.0));
        assert!(d.val_loss.is_finite() && d.val_loss_ema.is_finite());
        assert_eq!(d.robustness.len(), 2);
        assert!(d.robustness.iter().all(|r| r.is_finite() && *r > 0.0));
    }
}

#[test]
fn learned_scaling_reports_its_gates_and_shares_the_other_initial_weights() {
    let records = diagnostics(tiny("ls"));
    for (_, d) in &records {
        assert_eq!(d.gates.len(), 2);
        for g in &d.gates {
            assert!(0.0 < g.min && g.min <= g.mean && g.mean <= g.max && g.max < 1.0, "{g:?}");
        }
    }
    // Same seed, different scaling: every parameter both models have starts equal.
    let dir = tempfile::tempdir().unwrap();
    let ls = Trainer::new(tiny("ls"), dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let none = Trainer::new(tiny("none"), dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let ls_weights: std::collections::HashMap<_, _> = ls.weights().into_iter().collect();
    let none_weights = none.weights();
    assert!(ls_weights.len() > none_weights.len());
    for (name, w) in none_weights {
        let diff = (&ls_weights[&name] - &w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    assert_eq!(tiny("ls").model.scaling(), SkipScaling::Learned);
}

#[test]
fn validation_and_probe_are_fixed_across_runs() {
    // Same config and seed: identical records (fixed validation batch, probe inputs and noise).
    let a = diagnostics(tiny("none"));
    let b = diagnostics(tiny("none"));
    assert_eq!(a, b);
}

#[test]
fn definitions_by_hand() {
    // Per-sample L2 norms 5 and 0, averaged: 2.5.
    let x = Tensor::new(&[[3f32, 4.0], [0.0, 0.0]], &Device::Cpu).unwrap();
    assert_eq!(mean_sample_norm(&x).unwrap(), 2.5);
    let model = tiny("ls-per-skip").model; // depth 4: 2 in-blocks, a mid-block, 2 out-blocks
    assert_eq!(model.block_of("in_blocks.1.attn.qkv.weight"), Some(1));
    assert_eq!(model.block_of("mid_block.norm1.weight"), Some(2));
    assert_eq!(model.block_of("out_blocks.1.skip_linear.weight"), Some(4));
    assert_eq!(model.block_of("pos_embed"), None);
    assert_eq!(model.block_of("se.0.layer1.weight"), None);
    let names: Vec<String> = ["in_blocks.0.a", "in_blocks.0.b", "mid_block.a", "out_blocks.0.a", "decoder_pred.weight"]
        .map(String::from)
        .into();
    // sqrt(9 + 16) = 5, sqrt(4) = 2, sqrt(1) = 1; the head is not a block.
    assert_eq!(block_grad_norms(&model, &names, &[9.0, 16.0, 4.0, 1.0, 100.0]), vec![5.0, 0.0, 2.0, 1.0, 0.0]);
}
