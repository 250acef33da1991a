//! One optimizer step: micro-batches, loss, gradients, clipping, AdamW, EMA, and the diagnostics
//! record of the steps that ask for one.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_backbones::{Architecture, Backbone, Network, Taps};
use scalelong_data::Loader;
use scalelong_diffusion::drop_labels;

use super::setup::loader_config;
use super::{StepReport, Trainer};
use crate::diagnostics::{self, Diagnostics};

impl Trainer {
    /// The next micro-batch of the data (images on the device, labels after dropping for
    /// classifier-free guidance); counts its images into `images`.
    fn next_batch(&mut self, images: &mut usize) -> Result<(Tensor, Option<Tensor>)> {
        let t = &self.config.train;
        let (dataset, config, position) = (&self.dataset, &self.config, self.position);
        let loader = self.loader.get_or_insert_with(|| Loader::new(dataset.clone(), loader_config(config), position));
        let batch = loader.next_batch();
        self.position = batch.next;
        let (b, c, h, w) = batch.shape;
        *images += b;
        let x0 = Tensor::from_vec(batch.images, (b, c, h, w), &Device::Cpu)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let labels = match (&batch.labels, self.config.model.num_classes()) {
            (Some(l), Some(_)) => {
                let y = Tensor::new(l.as_slice(), &self.device)?;
                Some(match self.null_label {
                    Some(null) => drop_labels(&y, t.p_uncond, null as i64, &mut self.rng)?,
                    None => y,
                })
            }
            _ => None,
        };
        Ok((x0, labels))
    }

    /// One optimizer step (over `grad_accum` micro-batches).
    pub fn train_step(&mut self) -> Result<StepReport> {
        let t = self.config.train.clone();
        let lr = self.config.lr_at(self.step);
        let compute = self.compute_model()?;
        let mut grads: Option<Vec<Tensor>> = None;
        let mut loss_sum = 0.0;
        let mut images = 0;
        let every = self.config.diagnostics.every;
        let diagnose = self.probe.is_some() && every > 0 && (self.step + 1).is_multiple_of(every);
        let mut taps = diagnose.then(Taps::default);
        for _ in 0..t.grad_accum {
            let (labels, nb) = match self.fed.pop_front() {
                Some(fed) => {
                    images += fed.x0.dim(0)?;
                    let x0 = fed.x0.to_device(&self.device)?.to_dtype(self.dtype)?;
                    let noise = fed.noise.to_device(&self.device)?.to_dtype(self.dtype)?;
                    (None, self.objective.noised(&x0, &fed.u, noise)?)
                }
                None => {
                    let (x0, labels) = self.next_batch(&mut images)?;
                    (labels, self.objective.noise_batch(&x0, &mut self.rng)?)
                }
            };
            // Taps of the first micro-batch only: the diagnostics describe one forward pass.
            let out = t.autocast.run(|| match taps.as_mut().filter(|t| t.blocks.is_empty()) {
                Some(taps) => compute.forward_with_taps(&nb.x_t, &nb.t_input, labels.as_ref(), taps),
                None => compute.forward(&nb.x_t, &nb.t_input, labels.as_ref()),
            })?;
            let loss = self.objective.loss(&out.to_dtype(DType::F32)?, &nb.target.to_dtype(DType::F32)?)?;
            let loss = (loss / t.grad_accum as f64)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let store = loss.backward()?;
            let step_grads = self
                .opt
                .params()
                .iter()
                .map(|v| match store.get(v.as_tensor()) {
                    Some(g) => g.detach().to_dtype(DType::F32),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<Result<Vec<_>>>()?;
            grads = Some(match grads {
                None => step_grads,
                Some(acc) => acc.iter().zip(&step_grads).map(|(a, g)| a + g).collect::<Result<_>>()?,
            });
        }
        let mut grads = grads.expect("grad_accum >= 1");
        // One device-to-host copy for the whole norm, not one per parameter.
        let per_param = grads.iter().map(|g| g.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
        let per_param = Tensor::stack(&per_param, 0)?.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let squared = per_param.to_vec1::<f64>()?;
        let grad_norm = squared.iter().sum::<f64>().sqrt();
        let skipped = !loss_sum.is_finite() || !grad_norm.is_finite();
        if skipped {
            self.skipped += 1;
            self.bad_in_a_row += 1;
            tracing::warn!(step = self.step + 1, loss_sum, grad_norm, "non-finite loss or gradient: step skipped");
            if self.bad_in_a_row >= t.max_nonfinite {
                candle_core::bail!(
                    "{} steps in a row had a non-finite loss or gradient (last at step {}); stopping. The last checkpoint in {} is intact; try a lower train.lr or train.grad_clip",
                    self.bad_in_a_row,
                    self.step + 1,
                    self.checkpoint_dir().display()
                );
            }
        } else {
            self.bad_in_a_row = 0;
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                let scale = t.grad_clip / (grad_norm + 1e-6);
                grads = grads.iter().map(|g| g * scale).collect::<Result<_>>()?;
            }
            self.opt.step(&grads, lr)?;
            let d = t.ema_decay;
            for (e, p) in self.ema.iter_mut().zip(self.opt.params()) {
                *e = ((&*e * d)? + (p.as_tensor().detach() * (1.0 - d))?)?;
            }
        }
        self.step += 1;
        let diagnostics = match taps {
            Some(taps) => Some(self.diagnose(&taps, &squared)?),
            None => None,
        };
        Ok(StepReport { step: self.step, loss: loss_sum, lr, grad_norm, skipped, images, diagnostics })
    }

    /// The diagnostics record of the step just taken: forward-pass norms and gradients from that
    /// step, validation loss and robustness of the weights after its update.
    fn diagnose(&self, taps: &Taps, squared_grads: &[f64]) -> Result<Diagnostics> {
        let probe = self.probe.as_ref().expect("diagnose only with a probe");
        let f = diagnostics::from_taps(taps)?;
        let model =
            self.config.model.build(VarBuilder::from_tensors(self.detached(false), DType::F32, &self.device))?;
        let ema = self.config.model.build(VarBuilder::from_tensors(self.detached(true), DType::F32, &self.device))?;
        Ok(Diagnostics {
            feature_norm: f.feature_norm,
            block_feature_norms: f.block_feature_norms,
            skip_norms: f.skip_norms,
            scaled_skip_norms: f.scaled_skip_norms,
            gates: f.gates,
            block_grad_norms: diagnostics::block_grad_norms(&self.config.model, &self.names, squared_grads),
            val_loss: probe.val_loss(&model, &self.objective)?,
            val_loss_ema: probe.val_loss(&ema, &self.objective)?,
            robustness: probe.robustness(&model)?,
        })
    }

    /// The current or EMA weights, detached (evaluation builds no autograd graph).
    fn detached(&self, ema: bool) -> HashMap<String, Tensor> {
        let ws = if ema { self.ema_weights() } else { self.weights() };
        ws.into_iter().map(|(n, t)| (n, t.detach())).collect()
    }

    /// The model to run forward: the trained one in f32, or one on casts of its weights (gradients
    /// flow back through the casts to the f32 master weights).
    fn compute_model(&self) -> Result<Backbone> {
        if self.dtype == DType::F32 {
            return Ok(self.model.clone());
        }
        let ts = self
            .weights()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(self.dtype)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        self.config.model.build(VarBuilder::from_tensors(ts, self.dtype, &self.device))
    }
}
