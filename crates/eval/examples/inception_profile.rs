//! Times the FID Inception network's stages on random input: `cargo run --release -p
//! scalelong-eval --example inception_profile -- WEIGHTS [BATCH]`.
use std::time::Instant;

use candle_core::{Device, Tensor};
use scalelong_eval::FidInception;

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let net = FidInception::load(args[1].as_ref(), &Device::Cpu)?;
    let b: usize = args.get(2).map_or(10, |s| s.parse().unwrap());
    let x = Tensor::rand(-1f32, 1.0, (b, 3, 299, 299), &Device::Cpu)?;
    net.forward(&x)?;
    let t = Instant::now();
    net.forward(&x)?;
    let s = t.elapsed().as_secs_f64();
    println!("batch {b}: {:.3} s, {:.1} img/s", s, b as f64 / s);
    Ok(())
}
