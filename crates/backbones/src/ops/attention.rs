//! Multi-head attention `softmax(q k^T * scale) v` in one op: per image and head, two GEMMs and a
//! softmax on an L x L buffer that lives only inside the call (recomputed for the backward pass),
//! instead of a dozen candle ops whose scores, probabilities and gradients all stay allocated.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{autocast_bf16_active, fused, gemm, softmax, sum_by, Float};

/// Attention over `q, k, v (B, L, heads * D)`, heads side by side in the last axis as
/// `nn.MultiheadAttention` lays them out. Rows may be strided; the last axis must be contiguous.
/// Returns `(B, L, heads * D)`. For one fused projection use [`attention_packed`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, l, c) = q.dims3()?;
    if k.dims() != [b, l, c] || v.dims() != [b, l, c] || heads == 0 || !c.is_multiple_of(heads) {
        bail!("attention: q {:?}, k {:?}, v {:?} with {heads} heads", q.shape(), k.shape(), v.shape());
    }
    // An empty batch has nothing to attend over (and the kernel's views would start past the end).
    if !(fused(q) && k.dtype() == q.dtype() && v.dtype() == q.dtype()) || q.elem_count() == 0 {
        return composed(q, k, v, heads, scale);
    }
    let rows = |t: &Tensor| if t.stride()[2] == 1 { Ok(t.clone()) } else { t.contiguous() };
    let op = Attention { heads, scale, bf16: autocast_bf16_active() };
    rows(q)?.apply_op3(&rows(k)?, &rows(v)?, op)
}

/// Attention over one fused projection `qkv (B, L, 3 * heads * D)`, q, k and v side by side in
/// the last axis, each with its heads side by side (U-ViT's `'B L (K H D)'`). Its gradient is one
/// `(B, L, 3C)` tensor, written in place: narrow views of q, k and v would each cost a zero-padded
/// copy and an add of the whole projection in the backward pass.
pub fn attention_packed(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (_, _, c3) = qkv.dims3()?;
    let c = c3 / 3;
    if c3 % 3 != 0 || heads == 0 || !c.is_multiple_of(heads) {
        bail!("attention: qkv {:?} is not q, k, v side by side in {heads} heads", qkv.shape());
    }
    if !fused(qkv) || qkv.elem_count() == 0 {
        let part = |i: usize| qkv.narrow(2, i * c, c);
        return composed(&part(0)?, &part(1)?, &part(2)?, heads, scale);
    }
    qkv.contiguous()?.apply_op1(PackedAttention { heads, scale, bf16: autocast_bf16_active() })
}

/// The same from candle's primitive ops (other devices and dtypes; the tests' reference).
pub(super) fn composed(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, l, c) = q.dims3()?;
    let split = |t: &Tensor| t.reshape((b, l, heads, c / heads))?.transpose(1, 2)?.contiguous();
    let scores = (split(q)?.matmul(&split(k)?.t()?.contiguous()?)? * scale)?;
    let probs = super::softmax::composed(&scores)?;
    probs.matmul(&split(v)?)?.transpose(1, 2)?.reshape((b, l, c))
}

/// One of q, k, v: its elements from the view's start, and the strides of its batch and rows.
#[derive(Clone, Copy)]
struct Rows<'a, T> {
    data: &'a [T],
    batch: usize,
    row: usize,
}

impl<'a, T> Rows<'a, T> {
    fn new(s: &'a [T], l: &Layout) -> Result<Self> {
        let st = l.stride();
        if st.len() != 3 || st[2] != 1 {
            bail!("attention: expects (B, L, C) with a contiguous last axis, got strides {st:?}");
        }
        Ok(Self { data: &s[l.start_offset()..], batch: st[0], row: st[1] })
    }

    /// q, k and v of a contiguous `(B, L, 3C)` projection.
    fn packed(s: &'a [T], l: &Layout) -> Result<[Self; 3]> {
        let all = Self::new(s, l)?;
        let c = l.dims()[2] / 3;
        Ok([0, 1, 2].map(|i| Self { data: &all.data[i * c..], ..all }))
    }

    /// Head `h` (of width `d`) of image `b`, as a GEMM operand (optionally transposed).
    fn head(&self, b: usize, h: usize, d: usize, transposed: bool) -> (&'a [T], usize, usize) {
        let data = &self.data[b * self.batch + h * d..];
        if transposed {
            (data, 1, self.row)
        } else {
            (data, self.row, 1)
        }
    }
}

/// Sizes of one call, and whether its GEMMs take bf16 operands (autocast; the softmax stays f32).
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    l: usize,
    c: usize,
    heads: usize,
    scale: f64,
    bf16: bool,
}

impl Dims {
    /// From the layout of q (`parts` 1), or of the packed projection (`parts` 3).
    fn new(q: &Layout, parts: usize, heads: usize, scale: f64, bf16: bool) -> Result<Self> {
        let (b, l, c) = q.shape().dims3()?;
        Ok(Self { b, l, c: c / parts, heads, scale, bf16 })
    }

    fn d(&self) -> usize {
        self.c / self.heads
    }

    fn parallelism(&self) -> Parallelism {
        let threads = candle_core::utils::get_num_threads();
        if self.b >= threads {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        }
    }

    /// `probs (L, L)` = softmax(q k^T * scale) of image `b`, head `h`.
    #[inline(always)]
    fn probs<T: Float>(&self, q: Rows<T>, k: Rows<T>, b: usize, h: usize, probs: &mut [T]) {
        let (l, d) = (self.l, self.d());
        let (q_h, k_t) = (q.head(b, h, d, false), k.head(b, h, d, true));
        gemm((probs, l), (l, l, d), q_h, k_t, false, self.bf16, self.parallelism());
        let scale = T::from_f64(self.scale).unwrap();
        probs.iter_mut().for_each(|s| *s = *s * scale);
        softmax::rows_in_place(probs, l);
    }
}

/// The op; `bf16`: made inside autocast, so its GEMMs (and its backward's) take bf16 operands.
#[derive(Clone, Copy)]
struct Attention {
    heads: usize,
    scale: f64,
    bf16: bool,
}

simd_fn! {
    fn attention_fwd<T: Float>(q: Rows<T>, k: Rows<T>, v: Rows<T>, dims: Dims) -> Vec<T> {
        let (l, c, d) = (dims.l, dims.c, dims.d());
        let mut out = vec![T::zero(); dims.b * l * c];
        out.par_chunks_mut(l * c).enumerate().for_each_init(Vec::new, |probs, (b, out)| {
            probs.resize(l * l, T::zero());
            for h in 0..dims.heads {
                dims.probs(q, k, b, h, probs);
                let v_h = v.head(b, h, d, false);
                gemm((&mut out[h * d..], c), (l, d, l), (probs, l, 1), v_h, false, dims.bf16, dims.parallelism());
            }
        });
        out
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(l1, 1)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(attention_fwd(Rows::new(q, l1)?, Rows::new(k, l2)?, Rows::new(v, l3)?, dims))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                CpuStorage::F64(attention_fwd(Rows::new(q, l1)?, Rows::new(k, l2)?, Rows::new(v, l3)?, dims))
            }
            _ => bail!("{}: q, k, v must be all f32 or all f64", self.name()),
        };
        Ok((out, Shape::from((dims.b, dims.l, dims.c))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = q.apply_op3_no_bwd(k, v, &AttentionGrad { op: *self, grad: grad.contiguous()? })?;
        let c = q.dim(2)?;
        let part = |i: usize| all.narrow(2, i * c, c);
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}

impl Attention {
    fn dims(&self, l: &Layout, parts: usize) -> Result<Dims> {
        Dims::new(l, parts, self.heads, self.scale, self.bf16)
    }
}

/// [`Attention`] over one packed `(B, L, 3C)` projection.
struct PackedAttention {
    heads: usize,
    scale: f64,
    bf16: bool,
}

impl PackedAttention {
    fn op(&self) -> Attention {
        Attention { heads: self.heads, scale: self.scale, bf16: self.bf16 }
    }
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "attention-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = self.op().dims(l, 3)?;
        let out = float_op!(self.name(), (s, l) => qkv; {
            let [q, k, v] = Rows::packed(qkv, &Layout::contiguous(l.shape()))?;
            attention_fwd(q, k, v, dims)
        });
        Ok((out, Shape::from((dims.b, dims.l, dims.c))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &PackedAttentionGrad(self.op()))?))
    }
}

/// `(B, L, 3C)`: dq, dk, dv side by side, from q, k, v and the output gradient (held by the op).
struct AttentionGrad {
    op: Attention,
    grad: Tensor,
}

simd_fn! {
    /// `(B, L, 3C)`: dq, dk and dv side by side in the last axis, as the packed projection.
    fn attention_bwd<T: Float>(q: Rows<T>, k: Rows<T>, v: Rows<T>, grad: &[T], dims: Dims) -> Vec<T> {
        let (l, c, d, par, bf16) = (dims.l, dims.c, dims.d(), dims.parallelism(), dims.bf16);
        let mut out = vec![T::zero(); dims.b * l * 3 * c];
        out.par_chunks_mut(l * 3 * c).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(probs, dprobs), (b, out)| {
                probs.resize(l * l, T::zero());
                dprobs.resize(l * l, T::zero());
                let g = &grad[b * l * c..];
                for h in 0..dims.heads {
                    dims.probs(q, k, b, h, probs);
                    let g_h = (&g[h * d..], c, 1);
                    let (dq, dk, dv) = (h * d, c + h * d, 2 * c + h * d);
                    // dv = P^T g; dP = g v^T; dS = P * (dP - rowsum(dP * P)) * scale.
                    gemm((&mut out[dv..], 3 * c), (l, d, l), (probs, 1, l), g_h, false, bf16, par);
                    gemm((dprobs, l), (l, l, d), g_h, v.head(b, h, d, true), false, bf16, par);
                    let scale = T::from_f64(dims.scale).unwrap();
                    for (dp, p) in dprobs.chunks_mut(l).zip(probs.chunks(l)) {
                        let dot = sum_by(dp, p, |dp, p| dp * p);
                        dp.iter_mut().zip(p).for_each(|(dp, &p)| *dp = p * (*dp - dot) * scale);
                    }
                    // dq = dS k; dk = dS^T q.
                    gemm((&mut out[dq..], 3 * c), (l, d, l), (dprobs, l, 1), k.head(b, h, d, false), false, bf16, par);
                    gemm((&mut out[dk..], 3 * c), (l, d, l), (dprobs, 1, l), q.head(b, h, d, false), false, bf16, par);
                }
            },
        );
        out
    }
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.op.dims(l1, 1)?;
        let (gs, gl) = self.grad.storage_and_layout();
        let Storage::Cpu(gs) = &*gs else { bail!("{}: gradient not on the CPU", self.name()) };
        let out = match (s1, s2, s3, gs) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v), CpuStorage::F32(g)) => {
                let g = super::contiguous(g, gl, self.name())?;
                CpuStorage::F32(attention_bwd(Rows::new(q, l1)?, Rows::new(k, l2)?, Rows::new(v, l3)?, g, dims))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v), CpuStorage::F64(g)) => {
                let g = super::contiguous(g, gl, self.name())?;
                CpuStorage::F64(attention_bwd(Rows::new(q, l1)?, Rows::new(k, l2)?, Rows::new(v, l3)?, g, dims))
            }
            _ => bail!("{}: q, k, v and the gradient must be all f32 or all f64", self.name()),
        };
        Ok((out, Shape::from((dims.b, dims.l, 3 * dims.c))))
    }
}

/// The gradient of [`PackedAttention`]: `(qkv, output gradient)` in, `(B, L, 3C)` out.
struct PackedAttentionGrad(Attention);

impl CustomOp2 for PackedAttentionGrad {
    fn name(&self) -> &'static str {
        "attention-packed-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = self.0.dims(l1, 3)?;
        let out = float_op!(self.name(), (s1, l1) => qkv, (s2, l2) => g; {
            let [q, k, v] = Rows::packed(qkv, &Layout::contiguous(l1.shape()))?;
            attention_bwd(q, k, v, g, dims)
        });
        Ok((out, l1.shape().clone()))
    }
}
