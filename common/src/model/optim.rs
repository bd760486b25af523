//! Adam and a reduce-on-plateau schedule, kept here (rather than tch's
//! opaque optimizer) so their state can be saved in a checkpoint and a run
//! resumed exactly.

use crate::error::Result;
use std::collections::HashMap;
use tch::{Tensor, nn};

/// Adam (Kingma and Ba) over the trainable variables of a var store.
#[derive(Debug)]
pub struct Adam {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Learning rate.
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken (for bias correction).
    pub step: u64,
}

impl Adam {
    /// Zeroed moments for every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, lr: f64, betas: (f64, f64)) -> Result<Self> {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &[(String, Tensor)]| -> Result<Vec<Tensor>> {
            p.iter().map(|(_, t)| Ok(t.f_zeros_like()?)).collect()
        };
        Ok(Adam {
            m: zeros(&params)?,
            v: zeros(&params)?,
            params,
            lr,
            beta1: betas.0,
            beta2: betas.1,
            eps: 1e-8,
            step: 0,
        })
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                g = g.f_detach_()?;
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// One update from the current gradients.
    pub fn step(&mut self) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let step_size = self.lr / bc1;
        tch::no_grad(|| -> Result<()> {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let m = &mut self.m[i];
                let v = &mut self.v[i];
                let _ = m.f_mul_scalar_(self.beta1)?;
                let _ = m.f_add_(&g.f_mul_scalar(1.0 - self.beta1)?)?;
                let _ = v.f_mul_scalar_(self.beta2)?;
                let _ = v.f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - self.beta2)?)?;
                let denom = v.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(self.eps)?;
                let update = m.f_div(&denom)?.f_mul_scalar(step_size)?;
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// The moments, named `m.<var>` and `v.<var>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    /// Restores moments saved by [`Adam::state`]; missing entries are an
    /// error, so a resumed run never silently restarts its optimizer.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                    let key = format!("{prefix}.{name}");
                    let src = state.get(&key).ok_or_else(|| {
                        crate::Error::Checkpoint(format!("optimizer state lacks {key}"))
                    })?;
                    dst.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Halves (by `factor`) the learning rate when the monitored value has not
/// improved for `patience` evaluations; counts evaluations without
/// improvement for early stopping.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plateau {
    /// Best value seen (lower is better).
    pub best: f64,
    /// Evaluations since the best.
    pub bad_evals: u32,
    /// Evaluations since the last reduction.
    pub since_reduce: u32,
    /// Evaluations to wait before reducing.
    pub patience: u32,
    /// Multiplier applied to the rate.
    pub factor: f64,
    /// Floor of the rate.
    pub min_lr: f64,
}

impl Plateau {
    /// A schedule that has seen nothing yet.
    pub fn new(patience: u32, factor: f64, min_lr: f64) -> Self {
        Plateau {
            best: f64::INFINITY,
            bad_evals: 0,
            since_reduce: 0,
            patience,
            factor,
            min_lr,
        }
    }

    /// Records an evaluation; returns (improved, new learning rate).
    pub fn observe(&mut self, value: f64, lr: f64) -> (bool, f64) {
        // Relative improvement threshold as in PyTorch's default (1e-4).
        if value < self.best * (1.0 - 1e-4) {
            self.best = value;
            self.bad_evals = 0;
            self.since_reduce = 0;
            return (true, lr);
        }
        self.bad_evals += 1;
        self.since_reduce += 1;
        if self.since_reduce > self.patience {
            self.since_reduce = 0;
            return (false, (lr * self.factor).max(self.min_lr));
        }
        (false, lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn adam_matches_the_textbook_first_steps() {
        let vs = nn::VarStore::new(Device::Cpu);
        let x = vs.root().var("x", &[1], nn::Init::Const(1.0));
        let mut opt = Adam::new(&vs, 0.1, (0.9, 0.999)).unwrap();
        // f = x^2, gradient 2x. Step 1 of Adam moves by lr * sign(g).
        for expect in [0.9, 0.8002] {
            opt.zero_grad().unwrap();
            (&x * &x).sum(Kind::Float).backward();
            opt.step().unwrap();
            let got = x.double_value(&[0]);
            assert!((got - expect).abs() < 2e-3, "{got} vs {expect}");
        }
    }

    #[test]
    fn plateau_reduces_after_patience_and_resets_on_improvement() {
        let mut p = Plateau::new(2, 0.5, 1e-5);
        assert_eq!(p.observe(1.0, 1e-3), (true, 1e-3));
        assert_eq!(p.observe(1.0, 1e-3), (false, 1e-3));
        assert_eq!(p.observe(1.1, 1e-3), (false, 1e-3));
        assert_eq!(p.observe(1.2, 1e-3), (false, 5e-4));
        assert_eq!(p.bad_evals, 3);
        assert_eq!(p.observe(0.5, 5e-4), (true, 5e-4));
        assert_eq!(p.bad_evals, 0);
    }
}
