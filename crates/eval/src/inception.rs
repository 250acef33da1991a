//! pytorch-fid's FID Inception-v3 (`FIDInceptionA/C/E_1/E_2` in torchvision's InceptionV3), up to
//! the 2048-d pool3 features, with pytorch-fid's parameter names. Inference only: every
//! BatchNorm (eps 1e-3, running statistics) is folded into its convolution when loading.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_backbones::ops::conv2d_inference;

use crate::pool::Pool3;

/// Conv (no bias) + BatchNorm (eps 1e-3) + ReLU, as torchvision's `BasicConv2d`, folded.
#[derive(Debug, Clone)]
struct BasicConv {
    weight: Tensor,
    bias: Tensor,
    /// (rows, columns) of zero padding.
    padding: (usize, usize),
    stride: usize,
}

impl BasicConv {
    fn new(
        cin: usize,
        cout: usize,
        k: (usize, usize),
        padding: (usize, usize),
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let w = vb.get((cout, cin, k.0, k.1), "conv.weight")?.to_dtype(DType::F64)?;
        let bn = vb.pp("bn");
        let get = |name| bn.get(cout, name).and_then(|t| t.to_dtype(DType::F64));
        let (gamma, beta, mean, var) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        let scale = (gamma / (var + 1e-3)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?.to_dtype(DType::F32)?;
        let bias = (beta - (mean * &scale)?)?.to_dtype(DType::F32)?;
        Ok(Self { weight, bias, padding, stride })
    }

    fn square(cin: usize, cout: usize, k: usize, padding: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(cin, cout, (k, k), (padding, padding), stride, vb)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d_inference(x, &self.weight, &self.bias, self.padding, self.stride, true)
    }

    /// Without the ReLU.
    fn linear(&self, x: &Tensor) -> Result<Tensor> {
        conv2d_inference(x, &self.weight, &self.bias, self.padding, self.stride, false)
    }
}

/// The 1x1 convolutions of a block that read the block's input, as one convolution (one im2col
/// pass and one wide GEMM instead of three or four). The average-pool branch's 1x1 convolution
/// joins them: it commutes with a `count_include_pad=False` average pool (both are linear, the
/// pool's divisor is the same for every channel and the average of the bias is the bias), so the
/// block pools the branch's 32-192 output channels instead of its 192-2048 input channels.
#[derive(Debug, Clone)]
struct Heads {
    conv: BasicConv,
    sizes: Vec<usize>,
}

impl Heads {
    fn new(convs: &[&BasicConv]) -> Result<Self> {
        let cat = |f: fn(&BasicConv) -> &Tensor| Tensor::cat(&convs.iter().map(|c| f(c)).collect::<Vec<_>>(), 0);
        Ok(Self {
            conv: BasicConv { weight: cat(|c| &c.weight)?, bias: cat(|c| &c.bias)?, padding: (0, 0), stride: 1 },
            sizes: convs.iter().map(|c| c.bias.elem_count()).collect(),
        })
    }

    /// Each head's output before its ReLU.
    fn forward<const N: usize>(&self, x: &Tensor) -> Result<[Tensor; N]> {
        let y = self.conv.linear(x)?;
        let mut start = 0;
        let heads: Vec<Tensor> = (self.sizes.iter())
            .map(|&n| {
                start += n;
                y.narrow(1, start - n, n)
            })
            .collect::<Result<_>>()?;
        heads.try_into().map_err(|_| candle_core::Error::Msg(format!("expected {N} heads, built {:?}", self.sizes)))
    }
}

/// The pool branch from its head (the 1x1 convolution before the pool, see [`Heads`]).
fn avg_pool_branch(head: &Tensor) -> Result<Tensor> {
    Pool3::AvgSame.forward(head)?.relu()
}

const MAX_POOL_S2: Pool3 = Pool3::Max { stride: 2, padding: 0 };

/// `FIDInceptionA` (Mixed_5b/c/d).
#[derive(Debug, Clone)]
struct BlockA {
    /// branch1x1, branch5x5_1, branch3x3dbl_1, branch_pool.
    heads: Heads,
    b5x5_2: BasicConv,
    b3x3dbl: [BasicConv; 2],
}

impl BlockA {
    fn new(cin: usize, pool_features: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, name: &str| BasicConv::square(ci, co, k, p, 1, vb.pp(name));
        let heads = [
            c(cin, 64, 1, 0, "branch1x1")?,
            c(cin, 48, 1, 0, "branch5x5_1")?,
            c(cin, 64, 1, 0, "branch3x3dbl_1")?,
            c(cin, pool_features, 1, 0, "branch_pool")?,
        ];
        Ok(Self {
            heads: Heads::new(&heads.each_ref())?,
            b5x5_2: c(48, 64, 5, 2, "branch5x5_2")?,
            b3x3dbl: [c(64, 96, 3, 1, "branch3x3dbl_2")?, c(96, 96, 3, 1, "branch3x3dbl_3")?],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [b1x1, b5x5, b3x3dbl, pool] = self.heads.forward(x)?;
        let branches = [
            b1x1.relu()?,
            self.b5x5_2.forward(&b5x5.relu()?)?,
            chain(&self.b3x3dbl, &b3x3dbl.relu()?)?,
            avg_pool_branch(&pool)?,
        ];
        Tensor::cat(&branches, 1)
    }
}

/// `InceptionB` (Mixed_6a): a grid reduction.
#[derive(Debug, Clone)]
struct BlockB {
    b3x3: BasicConv,
    b3x3dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, s, name: &str| BasicConv::square(ci, co, k, p, s, vb.pp(name));
        Ok(Self {
            b3x3: c(cin, 384, 3, 0, 2, "branch3x3")?,
            b3x3dbl: [
                c(cin, 64, 1, 0, 1, "branch3x3dbl_1")?,
                c(64, 96, 3, 1, 1, "branch3x3dbl_2")?,
                c(96, 96, 3, 0, 2, "branch3x3dbl_3")?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[self.b3x3.forward(x)?, chain(&self.b3x3dbl, x)?, MAX_POOL_S2.forward(x)?], 1)
    }
}

/// `FIDInceptionC` (Mixed_6b..e): factorised 7x7 convolutions.
#[derive(Debug, Clone)]
struct BlockC {
    /// branch1x1, branch7x7_1, branch7x7dbl_1, branch_pool.
    heads: Heads,
    b7x7: [BasicConv; 2],
    b7x7dbl: [BasicConv; 4],
}

impl BlockC {
    fn new(cin: usize, c7: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, name: &str| BasicConv::new(ci, co, k, p, 1, vb.pp(name));
        let (k11, p11, k17, p17, k71, p71) = ((1, 1), (0, 0), (1, 7), (0, 3), (7, 1), (3, 0));
        let heads = [
            c(cin, 192, k11, p11, "branch1x1")?,
            c(cin, c7, k11, p11, "branch7x7_1")?,
            c(cin, c7, k11, p11, "branch7x7dbl_1")?,
            c(cin, 192, k11, p11, "branch_pool")?,
        ];
        Ok(Self {
            heads: Heads::new(&heads.each_ref())?,
            b7x7: [c(c7, c7, k17, p17, "branch7x7_2")?, c(c7, 192, k71, p71, "branch7x7_3")?],
            b7x7dbl: [
                c(c7, c7, k71, p71, "branch7x7dbl_2")?,
                c(c7, c7, k17, p17, "branch7x7dbl_3")?,
                c(c7, c7, k71, p71, "branch7x7dbl_4")?,
                c(c7, 192, k17, p17, "branch7x7dbl_5")?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [b1x1, b7x7, b7x7dbl, pool] = self.heads.forward(x)?;
        let branches = [
            b1x1.relu()?,
            chain(&self.b7x7, &b7x7.relu()?)?,
            chain(&self.b7x7dbl, &b7x7dbl.relu()?)?,
            avg_pool_branch(&pool)?,
        ];
        Tensor::cat(&branches, 1)
    }
}

/// `InceptionD` (Mixed_7a): a grid reduction.
#[derive(Debug, Clone)]
struct BlockD {
    /// branch3x3_1, branch7x7x3_1.
    heads: Heads,
    b3x3_2: BasicConv,
    b7x7x3: [BasicConv; 3],
}

impl BlockD {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, s, name: &str| BasicConv::new(ci, co, k, p, s, vb.pp(name));
        let heads = [c(cin, 192, (1, 1), (0, 0), 1, "branch3x3_1")?, c(cin, 192, (1, 1), (0, 0), 1, "branch7x7x3_1")?];
        Ok(Self {
            heads: Heads::new(&heads.each_ref())?,
            b3x3_2: c(192, 320, (3, 3), (0, 0), 2, "branch3x3_2")?,
            b7x7x3: [
                c(192, 192, (1, 7), (0, 3), 1, "branch7x7x3_2")?,
                c(192, 192, (7, 1), (3, 0), 1, "branch7x7x3_3")?,
                c(192, 192, (3, 3), (0, 0), 2, "branch7x7x3_4")?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [b3x3, b7x7x3] = self.heads.forward(x)?;
        let branches =
            [self.b3x3_2.forward(&b3x3.relu()?)?, chain(&self.b7x7x3, &b7x7x3.relu()?)?, MAX_POOL_S2.forward(x)?];
        Tensor::cat(&branches, 1)
    }
}

/// `FIDInceptionE_1` (Mixed_7b, average pool) and `FIDInceptionE_2` (Mixed_7c, max pool).
#[derive(Debug, Clone)]
struct BlockE {
    /// branch1x1, branch3x3_1, branch3x3dbl_1 and, with the average pool, branch_pool.
    heads: Heads,
    b3x3_2: [BasicConv; 2],
    b3x3dbl_2: BasicConv,
    b3x3dbl_3: [BasicConv; 2],
    /// Mixed_7c's branch_pool, after its max pool (which does not commute with the convolution).
    max_pool: Option<BasicConv>,
}

impl BlockE {
    fn new(cin: usize, max_pool: bool, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, name: &str| BasicConv::new(ci, co, k, p, 1, vb.pp(name));
        let (k11, p11, k13, p13, k31, p31) = ((1, 1), (0, 0), (1, 3), (0, 1), (3, 1), (1, 0));
        let pool = c(cin, 192, k11, p11, "branch_pool")?;
        let mut heads = vec![
            c(cin, 320, k11, p11, "branch1x1")?,
            c(cin, 384, k11, p11, "branch3x3_1")?,
            c(cin, 448, k11, p11, "branch3x3dbl_1")?,
        ];
        let max_pool = match max_pool {
            true => Some(pool),
            false => {
                heads.push(pool);
                None
            }
        };
        Ok(Self {
            heads: Heads::new(&heads.iter().collect::<Vec<_>>())?,
            b3x3_2: [c(384, 384, k13, p13, "branch3x3_2a")?, c(384, 384, k31, p31, "branch3x3_2b")?],
            b3x3dbl_2: c(448, 384, (3, 3), (1, 1), "branch3x3dbl_2")?,
            b3x3dbl_3: [c(384, 384, k13, p13, "branch3x3dbl_3a")?, c(384, 384, k31, p31, "branch3x3dbl_3b")?],
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b1x1, b3, dbl, pooled) = match &self.max_pool {
            Some(conv) => {
                let [b1x1, b3, dbl] = self.heads.forward(x)?;
                (b1x1, b3, dbl, conv.forward(&Pool3::Max { stride: 1, padding: 1 }.forward(x)?)?)
            }
            None => {
                let [b1x1, b3, dbl, pool] = self.heads.forward(x)?;
                (b1x1, b3, dbl, avg_pool_branch(&pool)?)
            }
        };
        let (b3, dbl) = (b3.relu()?, self.b3x3dbl_2.forward(&dbl.relu()?)?);
        let branches = [
            b1x1.relu()?,
            self.b3x3_2[0].forward(&b3)?,
            self.b3x3_2[1].forward(&b3)?,
            self.b3x3dbl_3[0].forward(&dbl)?,
            self.b3x3dbl_3[1].forward(&dbl)?,
            pooled,
        ];
        Tensor::cat(&branches, 1)
    }
}

fn chain(convs: &[BasicConv], x: &Tensor) -> Result<Tensor> {
    convs.iter().try_fold(x.clone(), |h, c| c.forward(&h))
}

/// The FID Inception network: `(B, 3, 299, 299)` in [-1, 1] to `(B, 2048)` pool3 features.
#[derive(Debug, Clone)]
pub struct FidInception {
    stem: [BasicConv; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
}

impl FidInception {
    /// Builds the network from pytorch-fid's parameter names (`Conv2d_1a_3x3.conv.weight`,
    /// `Mixed_5b.branch1x1.bn.running_mean`, ...).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let s = |ci, co, k, p, st, name: &str| BasicConv::square(ci, co, k, p, st, vb.pp(name));
        Ok(Self {
            stem: [
                s(3, 32, 3, 0, 2, "Conv2d_1a_3x3")?,
                s(32, 32, 3, 0, 1, "Conv2d_2a_3x3")?,
                s(32, 64, 3, 1, 1, "Conv2d_2b_3x3")?,
                s(64, 80, 1, 0, 1, "Conv2d_3b_1x1")?,
                s(80, 192, 3, 0, 1, "Conv2d_4a_3x3")?,
            ],
            mixed_5: [
                BlockA::new(192, 32, vb.pp("Mixed_5b"))?,
                BlockA::new(256, 64, vb.pp("Mixed_5c"))?,
                BlockA::new(288, 64, vb.pp("Mixed_5d"))?,
            ],
            mixed_6a: BlockB::new(288, vb.pp("Mixed_6a"))?,
            mixed_6: [
                BlockC::new(768, 128, vb.pp("Mixed_6b"))?,
                BlockC::new(768, 160, vb.pp("Mixed_6c"))?,
                BlockC::new(768, 160, vb.pp("Mixed_6d"))?,
                BlockC::new(768, 192, vb.pp("Mixed_6e"))?,
            ],
            mixed_7a: BlockD::new(768, vb.pp("Mixed_7a"))?,
            mixed_7: [BlockE::new(1280, false, vb.pp("Mixed_7b"))?, BlockE::new(2048, true, vb.pp("Mixed_7c"))?],
        })
    }

    /// Pool3 features `(B, 2048)` of network inputs `x (B, 3, 299, 299)` in [-1, 1].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != 3 {
            candle_core::bail!("FID Inception input has shape {:?}, expected (B, 3, H, W)", x.dims());
        }
        let x = x.to_dtype(DType::F32)?;
        let [c1, c2, c3, c4, c5] = &self.stem;
        let mut h = MAX_POOL_S2.forward(&c3.forward(&c2.forward(&c1.forward(&x)?)?)?)?;
        h = MAX_POOL_S2.forward(&c5.forward(&c4.forward(&h)?)?)?;
        for b in &self.mixed_5 {
            h = b.forward(&h)?;
        }
        h = self.mixed_6a.forward(&h)?;
        for b in &self.mixed_6 {
            h = b.forward(&h)?;
        }
        h = self.mixed_7a.forward(&h)?;
        for b in &self.mixed_7 {
            h = b.forward(&h)?;
        }
        h.mean((2, 3))
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.stem[0].weight.device()
    }
}
