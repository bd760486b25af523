//! `multir bench-model`: windows per second of a configuration, fp32 or
//! fp16 autocast, inference and optionally training steps (one JSON line).

use std::time::Instant;

use multir_common::model::checkpoint::{Checkpoint, CheckpointMeta};
use multir_common::model::{InferenceConfig, ModelConfig, MultiRNet, Predictor, loss, optim};
use multir_common::preprocess::PreprocessConfig;
use tch::{Kind, Tensor, nn};

use crate::cli::BenchModelArgs;

pub fn run(args: BenchModelArgs) -> anyhow::Result<()> {
    let device = multir_common::device::open(args.device.device)?;
    // "shipped" times the configuration of the compiled-in model, so the
    // benchmark follows it when it is retrained.
    let mut cfg = if args.model == "shipped" {
        multir_common::model::shipped::checkpoint()?.meta.model
    } else {
        ModelConfig::preset(&args.model)?
    };
    if let Some(p) = args.patch {
        cfg.patch = p.map(|v| v as usize);
    }
    if let Some(n) = args.iterations {
        cfg.iterations = n;
    }
    cfg.validate()?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let _ = MultiRNet::new(&vs.root(), &cfg)?;
    let params = multir_common::model::net::parameter_count(&vs);
    let meta = CheckpointMeta::new(
        cfg.clone(),
        PreprocessConfig::default(),
        vec!["covid".into(), "cap".into(), "healthy".into()],
    );
    let predictor = Predictor::new(&Checkpoint::from_var_store(&vs, meta, &[])?, device)?;
    let [i, j, k] = cfg.patch.map(|p| p as i64);
    let x = Tensor::f_rand([args.batch as i64, 1, k, j, i], (Kind::Float, device))?;
    let icfg = InferenceConfig {
        mixed_precision: args.mixed_precision,
        ..Default::default()
    };
    let sync = || {
        if let tch::Device::Cuda(d) = device {
            tch::Cuda::synchronize(d as i64);
        }
    };
    let pass = || -> anyhow::Result<()> {
        let (p, _) = tch::no_grad(|| predictor.forward_probs(&x, &icfg))?;
        // Touch the output so the pass is complete before the clock stops.
        let _ = p.f_sum(Kind::Float)?;
        Ok(())
    };
    for _ in 0..2 {
        pass()?;
    }
    sync();
    let t = Instant::now();
    for _ in 0..args.passes {
        pass()?;
    }
    sync();
    let secs = t.elapsed().as_secs_f64();
    let windows = (args.passes * args.batch) as f64;
    let mut out = serde_json::json!({
        "model": args.model,
        "parameters": params,
        "device": format!("{device:?}").to_lowercase(),
        "batch": args.batch,
        "patch": cfg.patch,
        "iterations": cfg.iterations,
        "mixed_precision": args.mixed_precision,
        "infer_windows_per_s": windows / secs,
        "threads": tch::get_num_threads(),
    });
    if args.train_step {
        let tvs = nn::VarStore::new(device);
        let net = MultiRNet::new(&tvs.root(), &cfg)?;
        let mut opt = optim::Adam::new(&tvs, 3e-4, (0.9, 0.999))?;
        let y = x.f_gt(0.9)?.f_to_kind(Kind::Float)?;
        let labels = Tensor::f_zeros([args.batch as i64], (Kind::Int64, device))?;
        let w = Tensor::f_ones([args.batch as i64], (Kind::Float, device))?;
        let lc = loss::LossConfig::default();
        let mut step = || -> anyhow::Result<()> {
            opt.zero_grad()?;
            let o = net.forward(&x)?;
            let l = loss::multitask_loss(&o.seg_logits, &y, &o.class_logits, &labels, &w, &lc)?;
            l.total.f_backward()?;
            opt.step()?;
            Ok(())
        };
        step()?;
        sync();
        let t = Instant::now();
        for _ in 0..args.passes {
            step()?;
        }
        sync();
        let s = t.elapsed().as_secs_f64() / args.passes as f64;
        out["train_s_per_step"] = s.into();
        out["train_windows_per_s"] = (args.batch as f64 / s).into();
    }
    super::emit(out)?;
    Ok(())
}
