//! `scalelong sample --weights DIR` on a diffusers folder samples as diffusers does with that
//! folder's scheduler config: the fixture (fixtures/diffusers_schedulers/make_fixture.py) holds a
//! small UNet2DModel, two scheduler configs (google/ddpm-cifar10-32's DDPMScheduler config and a
//! Stable-Diffusion-style DDIM one) and what diffusers' DDIM and DPM-Solver++ made from one noise.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers_schedulers")
}

#[test]
fn diffusers_folders_sample_as_diffusers_schedulers_read_their_config() {
    let expected = candle_core::safetensors::load(fixture().join("expected.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.npy");
    expected["noise"].write_npy(&noise).unwrap();
    let mut checked = 0;
    for config in ["ddpm_cifar10", "sd_style"] {
        // A diffusers folder: the UNet's files and this scheduler config.
        let folder = dir.path().join(config);
        std::fs::create_dir_all(&folder).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(fixture().join("unet").join(f), folder.join(f)).unwrap();
        }
        std::fs::copy(fixture().join(format!("{config}.json")), folder.join("scheduler_config.json")).unwrap();
        for sampler in ["ddim", "dpm-solver++"] {
            let out = dir.path().join(format!("{config}-{sampler}.npy"));
            let o = Command::new(env!("CARGO_BIN_EXE_scalelong"))
                .args(["sample", "--cpu", "--weights", folder.to_str().unwrap(), "--sampler", sampler, "--steps", "10"])
                .args(["--init-noise", noise.to_str().unwrap(), "--save-tensor", out.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            // The yardstick: how far diffusers' own float32 run is from its float64 run. Ours
            // must be as close to float64 as float32 allows (DDIM's 1/sqrt(alpha_bar) at t = 900
            // amplifies rounding ~60x), and orders of magnitude closer than a misread config.
            let max_diff = |a: &Tensor, b: &Tensor| {
                let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
                d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let ours = Tensor::read_npy(&out).unwrap();
            let (f32_run, f64_run) =
                (&expected[&format!("{config}.{sampler}")], &expected[&format!("{config}.{sampler}.f64")]);
            let (ours_err, their_err) = (max_diff(&ours, f64_run), max_diff(f32_run, f64_run));
            println!(
                "{config} {sampler}: ours vs float64 {ours_err:.2e}, diffusers' float32 vs float64 {their_err:.2e}"
            );
            assert!(
                ours_err <= 3.0 * their_err + 1e-6,
                "{config} {sampler}: {ours_err} from float64, diffusers' float32 {their_err}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}
