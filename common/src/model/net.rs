//! MultiR-Net (paper section 3): a V-Net segmentation subnet with reverse
//! attention in every skip connection and multi-scale fusion of the
//! decoder's side maps, a classification subnet fed with image x predicted
//! mask, and iterative refinement.
//!
//! Tensors are `N x C x D x H x W` with D = slices (k), H = rows (j), W =
//! columns (i): a [`crate::Volume`]'s i-fastest buffer read row-major.
//! Every operation uses tch's fallible `f_*` form, so a bad input is an
//! error value, never a panic in a worker.

use super::config::{Fusion, ModelConfig};
use crate::error::Result;
use tch::nn::{self, Init};
use tch::{Kind, TchError, Tensor};

type TResult<T> = std::result::Result<T, TchError>;

const NORM_EPS: f64 = 1e-5;

/// A 3D convolution with bias.
#[derive(Debug)]
struct Conv {
    w: Tensor,
    b: Tensor,
    stride: i64,
    pad: i64,
}

impl Conv {
    fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> TResult<Self> {
        Ok(Conv {
            w: p.f_var(
                "weight",
                &[cout, cin, k, k, k],
                nn::init::DEFAULT_KAIMING_UNIFORM,
            )?,
            b: p.f_var("bias", &[cout], Init::Const(0.0))?,
            stride,
            // "same" padding for odd kernels; none for the 2x2x2 down-convs.
            pad: if k % 2 == 1 { k / 2 } else { 0 },
        })
    }

    fn forward(&self, x: &Tensor) -> TResult<Tensor> {
        x.f_conv3d(
            &self.w,
            Some(&self.b),
            [self.stride; 3],
            [self.pad; 3],
            [1; 3],
            1,
        )
    }
}

/// A transposed convolution with kernel = stride (exact `stride`-fold
/// up-sampling).
#[derive(Debug)]
struct Deconv {
    w: Tensor,
    b: Tensor,
    stride: i64,
}

impl Deconv {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, init: Init) -> TResult<Self> {
        Ok(Deconv {
            w: p.f_var("weight", &[cin, cout, stride, stride, stride], init)?,
            b: p.f_var("bias", &[cout], Init::Const(0.0))?,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> TResult<Tensor> {
        x.f_conv_transpose3d(
            &self.w,
            Some(&self.b),
            [self.stride; 3],
            [0; 3],
            [0; 3],
            1,
            [1; 3],
        )
    }
}

/// Group normalisation and PReLU (V-Net's activation). Group norm rather
/// than batch norm: training batches are 4 patches, and inference must not
/// depend on which windows share a batch.
#[derive(Debug)]
struct NormAct {
    gamma: Tensor,
    beta: Tensor,
    groups: i64,
    slope: Tensor,
}

impl NormAct {
    fn new(p: &nn::Path, c: i64, groups: i64) -> TResult<Self> {
        // Largest divisor of c not above the configured group count.
        let g = (1..=groups.min(c)).rev().find(|g| c % g == 0).unwrap_or(1);
        Ok(NormAct {
            gamma: p.f_var("norm_weight", &[c], Init::Const(1.0))?,
            beta: p.f_var("norm_bias", &[c], Init::Const(0.0))?,
            groups: g,
            slope: p.f_var("prelu", &[1], Init::Const(0.25))?,
        })
    }

    fn forward(&self, x: &Tensor) -> TResult<Tensor> {
        x.f_group_norm(
            self.groups,
            Some(&self.gamma),
            Some(&self.beta),
            NORM_EPS,
            true,
        )?
        .f_prelu(&self.slope)
    }
}

/// Convolution, normalisation, activation.
#[derive(Debug)]
struct Block {
    conv: Conv,
    act: NormAct,
}

impl Block {
    fn new(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> TResult<Self> {
        Ok(Block {
            conv: Conv::new(p, cin, cout, k, stride)?,
            act: NormAct::new(p, cout, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> TResult<Tensor> {
        self.act.forward(&self.conv.forward(x)?)
    }
}

/// V-Net's residual stage: a chain of 3x3x3 blocks whose output is added
/// to its input.
#[derive(Debug)]
struct Residual {
    blocks: Vec<Block>,
}

impl Residual {
    fn new(p: &nn::Path, c: i64, n: usize, groups: i64) -> TResult<Self> {
        let blocks = (0..n)
            .map(|i| Block::new(&(p / format!("conv{i}")), c, c, 3, 1, groups))
            .collect::<TResult<_>>()?;
        Ok(Residual { blocks })
    }

    fn forward(&self, x: &Tensor) -> TResult<Tensor> {
        let mut h = x.shallow_clone();
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        h.f_add(x)
    }
}

/// One encoder level: the input convolution (level 0) or a strided 2x2x2
/// down-convolution, then a residual stage.
#[derive(Debug)]
struct EncoderStage {
    entry: Block,
    residual: Residual,
}

/// One decoder level: up-convolution of the coarser level, reverse
/// attention on the skip features, merge, residual stage, side map.
#[derive(Debug)]
struct DecoderStage {
    up: Deconv,
    up_act: NormAct,
    /// Reverse-attention refinement of the erased skip features, with the
    /// level's own channel count (the paper's change from 64 channels).
    attention: Option<Block>,
    merge: Block,
    residual: Residual,
}

/// Residual module of the classification subnet: two blocks, the first
/// possibly strided, and a 1x1x1 projection on the shortcut.
#[derive(Debug)]
struct ClsModule {
    a: Block,
    b: Block,
    shortcut: Conv,
}

impl ClsModule {
    fn forward(&self, x: &Tensor) -> TResult<Tensor> {
        self.b
            .forward(&self.a.forward(x)?)?
            .f_add(&self.shortcut.forward(x)?)
    }
}

/// What one forward pass returns.
#[derive(Debug)]
pub struct Output {
    /// Fused segmentation logits, `N x 1 x D x H x W` (eq. 1 before the
    /// sigmoid).
    pub seg_logits: Tensor,
    /// Class logits, `N x classes`.
    pub class_logits: Tensor,
    /// Output of the classification subnet's last module, the target of
    /// Grad-CAM, `N x C x d x h x w`.
    pub cls_features: Tensor,
}

/// The network. Its weights live in the [`nn::VarStore`] of the path it was
/// built on; loading them is the caller's business (see
/// [`super::checkpoint`]).
#[derive(Debug)]
pub struct MultiRNet {
    cfg: ModelConfig,
    encoder: Vec<EncoderStage>,
    /// Decoder stages for levels 0..levels-1, full resolution first.
    decoder: Vec<DecoderStage>,
    /// 1x1x1 convolutions giving the side map S_i of every level (the last
    /// one reads the bottom of the encoder).
    side: Vec<Conv>,
    /// Deconvolutions bringing S_i (i >= 1) to full size, 2^i-fold.
    fuse_up: Vec<Deconv>,
    /// alpha_i of eq. 1 (trained or fixed).
    alpha: Tensor,
    cls: Vec<ClsModule>,
    head_w: Tensor,
    head_b: Tensor,
}

/// Input channels of every pass: the volume and the previous fused map
/// (zeros on the first pass), so all iterations share one network.
pub const IN_CHANNELS: i64 = 2;

impl MultiRNet {
    /// Builds the network's variables under `p` from a validated config.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::build(p, cfg)?)
    }

    fn build(p: &nn::Path, cfg: &ModelConfig) -> TResult<Self> {
        let g = cfg.norm_groups;
        let w = &cfg.widths;
        let l = cfg.levels();
        let seg = p / "seg";
        let mut encoder = Vec::with_capacity(l);
        for i in 0..l {
            let q = &seg / format!("enc{i}");
            let entry = if i == 0 {
                Block::new(&(&q / "entry"), IN_CHANNELS, w[0], 3, 1, g)?
            } else {
                Block::new(&(&q / "down"), w[i - 1], w[i], 2, 2, g)?
            };
            let residual = Residual::new(&q, w[i], cfg.convs[i], g)?;
            encoder.push(EncoderStage { entry, residual });
        }
        let mut decoder = Vec::with_capacity(l - 1);
        for i in 0..l - 1 {
            let q = &seg / format!("dec{i}");
            decoder.push(DecoderStage {
                up: Deconv::new(
                    &(&q / "up"),
                    w[i + 1],
                    w[i],
                    2,
                    nn::init::DEFAULT_KAIMING_UNIFORM,
                )?,
                up_act: NormAct::new(&(&q / "up"), w[i], g)?,
                attention: if cfg.reverse_attention {
                    Some(Block::new(&(&q / "ra"), w[i], w[i], 3, 1, g)?)
                } else {
                    None
                },
                merge: Block::new(&(&q / "merge"), 2 * w[i], w[i], 3, 1, g)?,
                residual: Residual::new(&q, w[i], cfg.convs[i], g)?,
            });
        }
        let side = (0..l)
            .map(|i| Conv::new(&(&seg / format!("side{i}")), w[i], 1, 1, 1))
            .collect::<TResult<Vec<_>>>()?;
        // Initialised as nearest-neighbour up-sampling (all ones), so the
        // fused map starts as the mean of the side maps.
        let fuse_up = (1..l)
            .map(|i| {
                Deconv::new(
                    &(&seg / format!("fuse_up{i}")),
                    1,
                    1,
                    1 << i,
                    Init::Const(1.0),
                )
            })
            .collect::<TResult<Vec<_>>>()?;
        let alpha = match &cfg.fusion {
            Fusion::Learned => {
                seg.f_var("fusion_alpha", &[l as i64], Init::Const(1.0 / l as f64))?
            }
            Fusion::Fixed { weights } => Tensor::f_from_slice(weights)?
                .f_to_kind(Kind::Float)?
                .f_to_device(p.device())?,
        };
        let c = &cfg.cls_widths;
        let cq = p / "cls";
        let mut cls = Vec::with_capacity(6);
        let mut cin = 1;
        for (m, &cout) in c.iter().enumerate() {
            // Modules 1-4 halve the resolution; 0 and 5 keep it.
            let stride = if (1..=4).contains(&m) { 2 } else { 1 };
            let q = &cq / format!("m{m}");
            cls.push(ClsModule {
                a: Block::new(&(&q / "a"), cin, cout, 3, stride, g)?,
                b: Block::new(&(&q / "b"), cout, cout, 3, 1, g)?,
                shortcut: Conv::new(&(&q / "shortcut"), cin, cout, 1, stride)?,
            });
            cin = cout;
        }
        let feat = c[5] + w[l - 1];
        let head = &cq / "head";
        let bound = 1.0 / (feat as f64).sqrt();
        Ok(MultiRNet {
            cfg: cfg.clone(),
            encoder,
            decoder,
            side,
            fuse_up,
            alpha,
            cls,
            head_w: head.f_var(
                "weight",
                &[cfg.classes as i64, feat],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?,
            head_b: head.f_var("bias", &[cfg.classes as i64], Init::Const(0.0))?,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Runs the first pass and `iterations` refinements on `x`, a batch of
    /// normalised windows `N x 1 x D x H x W` whose sizes are multiples of
    /// 2^(levels-1). Returns the last pass's outputs.
    pub fn forward(&self, x: &Tensor) -> Result<Output> {
        Ok(self.forward_t(x)?)
    }

    fn forward_t(&self, x: &Tensor) -> TResult<Output> {
        let size = x.size();
        let unit = 1i64 << (self.cfg.levels() - 1);
        if size.len() != 5 || size[1] != 1 || size[2..].iter().any(|&s| s <= 0 || s % unit != 0) {
            return Err(TchError::Shape(format!(
                "MultiR-Net input must be N x 1 x D x H x W with D, H, W multiples of {unit}, got {size:?}"
            )));
        }
        let mut prev = x.f_zeros_like()?;
        let mut out = None;
        for _ in 0..=self.cfg.iterations {
            let o = self.pass(x, &prev)?;
            prev = o.seg_logits.f_sigmoid()?;
            out = Some(o);
        }
        Ok(out.expect("at least one pass"))
    }

    /// One pass through both subnets.
    fn pass(&self, x: &Tensor, prev: &Tensor) -> TResult<Output> {
        let l = self.cfg.levels();
        let input = Tensor::f_cat(&[x, prev], 1)?;
        // Encoder.
        let mut skips = Vec::with_capacity(l);
        let mut h = input;
        for stage in &self.encoder {
            h = stage.residual.forward(&stage.entry.forward(&h)?)?;
            skips.push(h.shallow_clone());
        }
        // Decoder, coarsest first; `s_maps[i]` is S_i.
        let mut s_maps: Vec<Option<Tensor>> = (0..l).map(|_| None).collect();
        s_maps[l - 1] = Some(self.side[l - 1].forward(&h)?);
        for i in (0..l - 1).rev() {
            let d = &self.decoder[i];
            let skip = &skips[i];
            let up = d.up_act.forward(&d.up.forward(&h)?)?;
            let skip = match &d.attention {
                Some(ra) => {
                    // Reverse attention: erase what the coarser level already
                    // predicts, so this level learns the complement (edges).
                    let coarse = s_maps[i + 1].as_ref().expect("coarser map computed");
                    let sz = skip.size();
                    let a = coarse
                        .f_upsample_trilinear3d([sz[2], sz[3], sz[4]], false, None, None, None)?
                        .f_sigmoid()?
                        .f_neg()?
                        .f_add_scalar(1.0)?;
                    ra.forward(&skip.f_mul(&a)?)?
                }
                None => skip.shallow_clone(),
            };
            let merged = d.merge.forward(&Tensor::f_cat(&[&up, &skip], 1)?)?;
            h = d.residual.forward(&merged)?;
            s_maps[i] = Some(self.side[i].forward(&h)?);
        }
        // Multi-scale fusion, eq. 1.
        let mut fused = s_maps[0]
            .as_ref()
            .expect("full-resolution map")
            .f_mul(&self.alpha.f_get(0)?)?;
        for i in 1..l {
            let up = self.fuse_up[i - 1].forward(s_maps[i].as_ref().expect("side map"))?;
            fused = fused.f_add(&up.f_mul(&self.alpha.f_get(i as i64)?)?)?;
        }
        // Classification subnet on image x predicted mask.
        let mut c = x.f_mul(&fused.f_sigmoid()?)?;
        for m in &self.cls {
            c = m.forward(&c)?;
        }
        let pooled_cls = c.f_mean_dim([2i64, 3, 4].as_slice(), false, Kind::Float)?;
        let pooled_seg = skips[l - 1].f_mean_dim([2i64, 3, 4].as_slice(), false, Kind::Float)?;
        let feat = Tensor::f_cat(&[pooled_cls, pooled_seg], 1)?;
        let class_logits = feat.f_linear(&self.head_w, Some(&self.head_b))?;
        Ok(Output {
            seg_logits: fused,
            class_logits,
            cls_features: c,
        })
    }
}

/// Number of trainable scalars in a var store.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn build(cfg: &ModelConfig) -> (nn::VarStore, MultiRNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = MultiRNet::new(&vs.root(), cfg).unwrap();
        (vs, net)
    }

    fn input(cfg: &ModelConfig, n: i64) -> Tensor {
        let [i, j, k] = cfg.patch.map(|p| p as i64);
        Tensor::rand([n, 1, k, j, i], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn output_shapes_for_each_config() {
        tch::manual_seed(0);
        for mut cfg in [
            ModelConfig::tiny(),
            ModelConfig::small(),
            ModelConfig::paper(),
        ] {
            // Smaller windows keep the big configs quick on a CPU.
            let unit = 1 << (cfg.levels() - 1);
            cfg.patch = [2 * unit, unit, unit];
            let (_vs, net) = build(&cfg);
            let x = input(&cfg, 2);
            let out = tch::no_grad(|| net.forward(&x)).unwrap();
            let [i, j, k] = cfg.patch.map(|p| p as i64);
            assert_eq!(out.seg_logits.size(), [2, 1, k, j, i]);
            assert_eq!(out.class_logits.size(), [2, cfg.classes as i64]);
            assert_eq!(out.cls_features.size()[1], cfg.cls_widths[5]);
        }
    }

    #[test]
    fn parameter_counts_match_the_documented_sizes() {
        let (vs, _) = build(&ModelConfig::paper());
        let n = parameter_count(&vs);
        assert!(
            (14_000_000..17_000_000).contains(&n),
            "paper config has {n} parameters"
        );
        let (vs, _) = build(&ModelConfig::small());
        let n = parameter_count(&vs);
        assert!(n < 750_000, "small config has {n} parameters");
    }

    #[test]
    fn gradients_reach_every_parameter() {
        tch::manual_seed(1);
        for ra in [true, false] {
            let mut cfg = ModelConfig::tiny();
            cfg.reverse_attention = ra;
            let (vs, net) = build(&cfg);
            let out = net.forward(&input(&cfg, 2)).unwrap();
            let loss = out.seg_logits.sigmoid().mean(Kind::Float)
                + out.class_logits.pow_tensor_scalar(2).mean(Kind::Float);
            loss.backward();
            for (name, t) in vs.variables() {
                let g = t.grad();
                assert!(g.defined(), "{name} got no gradient");
                assert!(
                    g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                    "{name} has a zero gradient"
                );
            }
        }
    }

    #[test]
    fn wrong_input_shapes_are_errors_not_panics() {
        let cfg = ModelConfig::tiny();
        let (_vs, net) = build(&cfg);
        for shape in [
            vec![1i64, 1, 8, 16, 15],
            vec![1, 2, 8, 16, 16],
            vec![8, 16, 16],
        ] {
            let x = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
            let e = net.forward(&x).unwrap_err().to_string();
            assert!(e.contains("MultiR-Net input"), "{e}");
        }
    }

    #[test]
    fn fixed_fusion_weights_are_not_trained() {
        let mut cfg = ModelConfig::tiny();
        cfg.fusion = Fusion::Fixed {
            weights: vec![1.0, 0.5, 0.25],
        };
        let (vs, _) = build(&cfg);
        assert!(!vs.variables().keys().any(|k| k.contains("fusion_alpha")));
        let (vs, _) = build(&ModelConfig::tiny());
        assert!(vs.variables().keys().any(|k| k.contains("fusion_alpha")));
    }
}
