//! What the CPU can do at most, to read every GFLOP/s against: its f32 FMA throughput and, where
//! it has them, its bf16 dot products (AVX512-BF16 `vdpbf16ps`, AMX `tdpbf16ps`), all measured,
//! not looked up (clocks and vector units differ between the machines these benches run on); and
//! a large square GEMM in f32 (ours, the `gemm` crate through candle) and in bf16 (ours,
//! `matmul_bf16`) against PyTorch's (MKL/oneDNN; bf16 under `torch.autocast`).

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use scalelong_backbones::ops::amx_dot_chains;
use serde::{Deserialize, Serialize};

use super::case::{ours_and_reference, peak_mb, reset_peak, spread, timed, Measured};
use super::Row;

/// Independent accumulators per thread: enough to hide an FMA's latency (4 cycles) on two FMA
/// units, few enough to stay in registers (16 of AVX2's 16, of AVX-512's 32).
const CHAINS: usize = 16;

/// f32 FMA throughput of `threads` threads each running independent FMA chains with the widest
/// vectors this CPU has, best of three: (GFLOP/s, the instruction set used). `None` where no
/// measuring loop exists for this architecture.
pub fn fma_peak(threads: usize) -> Option<(f64, &'static str)> {
    let (lanes, isa) = vector_width()?;
    let iters: u64 = 20_000_000;
    let flops = iters as f64 * (CHAINS * lanes * 2) as f64;
    Some((best_rate(threads, flops, || fma_chains(iters)), isa))
}

/// bf16 dot-product throughput (GFLOP/s, a multiply and an add per product) of `threads` threads
/// with each bf16 instruction set this CPU has: AVX512-BF16 and AMX-BF16.
pub fn bf16_peaks(threads: usize) -> Vec<(f64, &'static str)> {
    let mut peaks = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512bf16") {
            let iters: u64 = 20_000_000;
            // SAFETY: the CPU has AVX512-BF16.
            let rate = best_rate(threads, iters as f64 * (CHAINS * 64) as f64, || unsafe { dpbf16_chains(iters) });
            peaks.push((rate, "AVX512-BF16 vdpbf16ps"));
        }
    }
    const ITERS: u64 = 2_000_000;
    if let Some(flops) = amx_dot_chains(ITERS) {
        let rate = best_rate(threads, flops, || amx_dot_chains(ITERS).unwrap_or(0.0) as f32);
        peaks.push((rate, "AMX-BF16 tdpbf16ps"));
    }
    peaks
}

/// GFLOP/s of `threads` threads each running `work` (`flops` operations), best of three.
fn best_rate(threads: usize, flops: f64, work: impl Fn() -> f32 + Sync) -> f64 {
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box(work()));
                }
            });
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    threads as f64 * flops / best / 1e9
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f")]
fn dpbf16_chains(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3)),
        _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3)),
    );
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for _ in 0..std::hint::black_box(iters) {
        for r in acc.iter_mut() {
            *r = _mm512_dpbf16_ps(*r, a, b);
        }
    }
    _mm512_reduce_add_ps(acc.into_iter().fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, r)))
}

#[cfg(target_arch = "x86_64")]
fn vector_width() -> Option<(usize, &'static str)> {
    if is_x86_feature_detected!("avx512f") {
        Some((16, "AVX-512 FMA"))
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Some((8, "AVX2 FMA"))
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn vector_width() -> Option<(usize, &'static str)> {
    None
}

#[cfg(target_arch = "x86_64")]
fn fma_chains(iters: u64) -> f32 {
    // SAFETY: each is called only where `vector_width` detected its features.
    unsafe {
        if is_x86_feature_detected!("avx512f") {
            fma_avx512(iters)
        } else {
            fma_avx2(iters)
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_chains(_iters: u64) -> f32 {
    0.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-6));
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    _mm512_reduce_add_ps(acc.into_iter().fold(_mm512_setzero_ps(), |s, r| _mm512_add_ps(s, r)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-6));
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc.into_iter().fold(_mm256_setzero_ps(), |s, r| _mm256_add_ps(s, r)))
    };
    lanes.iter().sum()
}

/// One square GEMM timing, handed to the child (`xtask bench-gemm JSON`) and to PyTorch.
#[derive(Serialize, Deserialize)]
pub struct GemmCase {
    pub n: usize,
    /// bf16 operands and f32 sums: ours `matmul_bf16`, PyTorch's matmul under autocast.
    #[serde(default)]
    pub bf16: bool,
    pub warmup: usize,
    pub repeats: usize,
    pub threads: usize,
}

/// Times `(n, n) x (n, n)` with candle's matmul in this process and prints a [`Measured`].
pub fn run_case(json: &str) -> Result<()> {
    let case: GemmCase = serde_json::from_str(json)?;
    reset_peak();
    let a = Tensor::rand(-1f32, 1.0, (case.n, case.n), &Device::Cpu)?;
    let b = Tensor::rand(-1f32, 1.0, (case.n, case.n), &Device::Cpu)?;
    let mut step = || -> Result<()> {
        match case.bf16 {
            true => scalelong_backbones::ops::matmul_bf16(&a, &b)?,
            false => a.matmul(&b)?,
        };
        Ok(())
    };
    let sample_ms = timed(&mut step, case.warmup, case.repeats)?;
    println!(
        "{}",
        serde_json::to_string(&Measured { train_ms: vec![], sample_ms, peak_rss_mb: peak_mb(), torch: String::new() })?
    );
    Ok(())
}

/// The GEMM's row: ours in a child process, then PyTorch's `torch.matmul` (unless `none`).
pub fn gemm_row(case: &GemmCase, python: &str) -> Result<(Row, Option<String>)> {
    let json = serde_json::to_string(case)?;
    let dtype = if case.bf16 { "bf16" } else { "f32" };
    let label = format!("gemm-{dtype}-{}", case.n);
    let (ours, reference) = ours_and_reference("bench-gemm", "bench_gemm.py", &json, case.threads, python, &label)?;
    let (ms, lo, hi) = spread(&ours.sample_ms);
    let reference_ms = reference.as_ref().map(|r| super::median(&r.sample_ms));
    let row = Row {
        case: format!("gemm/{dtype}/{n}x{n}x{n}", n = case.n),
        model: "gemm".into(),
        scaling: "-".into(),
        batch: 1,
        step: "matmul",
        ours_ms: ms,
        ours_spread_ms: (lo, hi),
        reference_ms,
        ratio: reference_ms.map(|r| ms / r),
        images_per_s: 0.0,
        gflops: 2.0 * (case.n as f64).powi(3) / (ms / 1e3) / 1e9,
        ours_peak_mb: ours.peak_rss_mb,
        reference_peak_mb: reference.as_ref().map(|r| r.peak_rss_mb),
        cpu: super::cpu::describe(),
    };
    Ok((row, reference.map(|r| r.torch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fma_loop_is_measured_not_folded_away() {
        let Some((one, isa)) = fma_peak(1) else { return };
        assert!(one > 1.0 && !isa.is_empty(), "{one} GFLOP/s with {isa}");
        // A loop that the compiler had folded away would report absurd rates.
        assert!(one < 1e4, "{one} GFLOP/s on one thread");
        // bf16 units, where present: measured too (on a Sapphire Rapids `vdpbf16ps` ran at half
        // the f32 FMA's rate, AMX at 15 times it).
        for (rate, isa) in bf16_peaks(1) {
            assert!(rate > 1.0 && rate < 1e5, "{rate} GFLOP/s with {isa}");
        }
    }
}
