//! pytorch-fid's FID Inception-v3 (`FIDInceptionA/C/E_1/E_2` in torchvision's InceptionV3), up to
//! the 2048-d pool3 features, with pytorch-fid's parameter names. Inference only: every
//! BatchNorm (eps 1e-3, running statistics) is folded into its convolution when loading.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use scalelong_backbones::ops::{conv2d, Conv2dParams};

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
        let (ph, pw) = self.padding;
        // Asymmetric padding (the 1x7 and 7x1 kernels) as explicit zero rows/columns.
        let (x, p) = match ph == pw {
            true => (x.clone(), ph),
            false => (x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0),
        };
        conv2d(&x, &self.weight, Some(&self.bias), Conv2dParams { padding: p, stride: self.stride })?.relu()
    }
}

/// 3x3 average pool, stride 1, padding 1, `count_include_pad=False` (the FID blocks' pool branch).
fn avg_pool_3x3_exclude_pad(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let sums = (padded.avg_pool2d_with_stride(3, 1)? * 9.0)?;
    let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let counts = (ones.avg_pool2d_with_stride(3, 1)? * 9.0)?;
    sums.broadcast_div(&counts)
}

/// 3x3 max pool, stride 1, padding 1 (Mixed_7c's pool branch). Its input is a ReLU output (>= 0),
/// so zero padding gives the same maximum as PyTorch's -inf padding.
fn max_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.max_pool2d_with_stride(3, 1)
}

fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    x.max_pool2d_with_stride(3, 2)
}

/// `FIDInceptionA` (Mixed_5b/c/d).
#[derive(Debug, Clone)]
struct BlockA {
    b1x1: BasicConv,
    b5x5: [BasicConv; 2],
    b3x3dbl: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(cin: usize, pool_features: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, name: &str| BasicConv::square(ci, co, k, p, 1, vb.pp(name));
        Ok(Self {
            b1x1: c(cin, 64, 1, 0, "branch1x1")?,
            b5x5: [c(cin, 48, 1, 0, "branch5x5_1")?, c(48, 64, 5, 2, "branch5x5_2")?],
            b3x3dbl: [
                c(cin, 64, 1, 0, "branch3x3dbl_1")?,
                c(64, 96, 3, 1, "branch3x3dbl_2")?,
                c(96, 96, 3, 1, "branch3x3dbl_3")?,
            ],
            pool: c(cin, pool_features, 1, 0, "branch_pool")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let branches = [
            self.b1x1.forward(x)?,
            chain(&self.b5x5, x)?,
            chain(&self.b3x3dbl, x)?,
            self.pool.forward(&avg_pool_3x3_exclude_pad(x)?)?,
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
        Tensor::cat(&[self.b3x3.forward(x)?, chain(&self.b3x3dbl, x)?, max_pool_3x3_s2(x)?], 1)
    }
}

/// `FIDInceptionC` (Mixed_6b..e): factorised 7x7 convolutions.
#[derive(Debug, Clone)]
struct BlockC {
    b1x1: BasicConv,
    b7x7: [BasicConv; 3],
    b7x7dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(cin: usize, c7: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, name: &str| BasicConv::new(ci, co, k, p, 1, vb.pp(name));
        let (k17, p17, k71, p71) = ((1, 7), (0, 3), (7, 1), (3, 0));
        Ok(Self {
            b1x1: c(cin, 192, (1, 1), (0, 0), "branch1x1")?,
            b7x7: [
                c(cin, c7, (1, 1), (0, 0), "branch7x7_1")?,
                c(c7, c7, k17, p17, "branch7x7_2")?,
                c(c7, 192, k71, p71, "branch7x7_3")?,
            ],
            b7x7dbl: [
                c(cin, c7, (1, 1), (0, 0), "branch7x7dbl_1")?,
                c(c7, c7, k71, p71, "branch7x7dbl_2")?,
                c(c7, c7, k17, p17, "branch7x7dbl_3")?,
                c(c7, c7, k71, p71, "branch7x7dbl_4")?,
                c(c7, 192, k17, p17, "branch7x7dbl_5")?,
            ],
            pool: c(cin, 192, (1, 1), (0, 0), "branch_pool")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let branches = [
            self.b1x1.forward(x)?,
            chain(&self.b7x7, x)?,
            chain(&self.b7x7dbl, x)?,
            self.pool.forward(&avg_pool_3x3_exclude_pad(x)?)?,
        ];
        Tensor::cat(&branches, 1)
    }
}

/// `InceptionD` (Mixed_7a): a grid reduction.
#[derive(Debug, Clone)]
struct BlockD {
    b3x3: [BasicConv; 2],
    b7x7x3: [BasicConv; 4],
}

impl BlockD {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, s, name: &str| BasicConv::new(ci, co, k, p, s, vb.pp(name));
        Ok(Self {
            b3x3: [c(cin, 192, (1, 1), (0, 0), 1, "branch3x3_1")?, c(192, 320, (3, 3), (0, 0), 2, "branch3x3_2")?],
            b7x7x3: [
                c(cin, 192, (1, 1), (0, 0), 1, "branch7x7x3_1")?,
                c(192, 192, (1, 7), (0, 3), 1, "branch7x7x3_2")?,
                c(192, 192, (7, 1), (3, 0), 1, "branch7x7x3_3")?,
                c(192, 192, (3, 3), (0, 0), 2, "branch7x7x3_4")?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[chain(&self.b3x3, x)?, chain(&self.b7x7x3, x)?, max_pool_3x3_s2(x)?], 1)
    }
}

/// `FIDInceptionE_1` (Mixed_7b, average pool) and `FIDInceptionE_2` (Mixed_7c, max pool).
#[derive(Debug, Clone)]
struct BlockE {
    b1x1: BasicConv,
    b3x3_1: BasicConv,
    b3x3_2: [BasicConv; 2],
    b3x3dbl: [BasicConv; 2],
    b3x3dbl_3: [BasicConv; 2],
    pool: BasicConv,
    max_pool: bool,
}

impl BlockE {
    fn new(cin: usize, max_pool: bool, vb: VarBuilder) -> Result<Self> {
        let c = |ci, co, k, p, name: &str| BasicConv::new(ci, co, k, p, 1, vb.pp(name));
        let (k13, p13, k31, p31) = ((1, 3), (0, 1), (3, 1), (1, 0));
        Ok(Self {
            b1x1: c(cin, 320, (1, 1), (0, 0), "branch1x1")?,
            b3x3_1: c(cin, 384, (1, 1), (0, 0), "branch3x3_1")?,
            b3x3_2: [c(384, 384, k13, p13, "branch3x3_2a")?, c(384, 384, k31, p31, "branch3x3_2b")?],
            b3x3dbl: [c(cin, 448, (1, 1), (0, 0), "branch3x3dbl_1")?, c(448, 384, (3, 3), (1, 1), "branch3x3dbl_2")?],
            b3x3dbl_3: [c(384, 384, k13, p13, "branch3x3dbl_3a")?, c(384, 384, k31, p31, "branch3x3dbl_3b")?],
            pool: c(cin, 192, (1, 1), (0, 0), "branch_pool")?,
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.b3x3_1.forward(x)?;
        let dbl = chain(&self.b3x3dbl, x)?;
        let pooled = match self.max_pool {
            true => max_pool_3x3_same(x)?,
            false => avg_pool_3x3_exclude_pad(x)?,
        };
        let branches = [
            self.b1x1.forward(x)?,
            self.b3x3_2[0].forward(&b3)?,
            self.b3x3_2[1].forward(&b3)?,
            self.b3x3dbl_3[0].forward(&dbl)?,
            self.b3x3dbl_3[1].forward(&dbl)?,
            self.pool.forward(&pooled)?,
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
        let mut h = max_pool_3x3_s2(&c3.forward(&c2.forward(&c1.forward(&x)?)?)?)?;
        h = max_pool_3x3_s2(&c5.forward(&c4.forward(&h)?)?)?;
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
