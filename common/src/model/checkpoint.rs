//! Checkpoints: safetensors files whose header metadata carries everything
//! needed to rebuild and use the network (architecture, preprocessing,
//! class names, where the weights came from).
//!
//! The model never reads files: [`Checkpoint::from_bytes`] decodes bytes,
//! [`Checkpoint::read_path`] is the thin path wrapper, and
//! [`Checkpoint::load_into`] copies the weights into a caller's
//! [`nn::VarStore`] after checking every name and shape.
//!
//! Model weights are stored under their var-store names; training state
//! (Adam moments) under `optim.m.<name>` / `optim.v.<name>`, so a file can
//! resume training and still be read by code that only wants the model.

use super::config::ModelConfig;
use crate::error::{Context, Error, Result};
use crate::preprocess::PreprocessConfig;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor, nn};

/// The `format` value every checkpoint carries.
pub const FORMAT: &str = "multir-checkpoint";
/// The current layout version.
pub const VERSION: u32 = 1;
/// Largest checkpoint file read (the paper config is about 40 MB with
/// optimizer state).
pub const MAX_BYTES: u64 = 2 << 30;
/// Prefix of the optimizer-state tensors.
pub const OPTIM_PREFIX: &str = "optim.";

/// Where the weights came from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainingInfo {
    /// FNV-1a 64 of the training scans' image and mask bytes and labels,
    /// in manifest order (hex): two checkpoints with the same fingerprint
    /// saw the same data.
    pub fingerprint: String,
    /// Scans used for training (validation scans excluded).
    pub train_scans: usize,
    /// Scans held out for validation.
    pub val_scans: usize,
    /// Seed of the run.
    pub seed: u64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Device the run used.
    pub device: String,
    /// Validation metrics of these weights, as the training loop measured them.
    pub validation: BTreeMap<String, f64>,
    /// Free-form note (the command line that produced the file).
    pub note: String,
}

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// Architecture.
    pub model: ModelConfig,
    /// Preprocessing the network was trained with.
    pub preprocess: PreprocessConfig,
    /// Class names, index order.
    pub classes: Vec<String>,
    /// Provenance.
    pub training: TrainingInfo,
    /// Training-loop state for resuming (JSON), if saved.
    #[serde(default)]
    pub resume: Option<serde_json::Value>,
}

impl CheckpointMeta {
    /// Metadata for a fresh network.
    pub fn new(model: ModelConfig, preprocess: PreprocessConfig, classes: Vec<String>) -> Self {
        CheckpointMeta {
            format: FORMAT.into(),
            version: VERSION,
            model,
            preprocess,
            classes,
            training: TrainingInfo::default(),
            resume: None,
        }
    }
}

/// One stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Shape.
    pub shape: Vec<i64>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl StoredTensor {
    /// A CPU tensor holding the values.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(&self.data)?.f_reshape(self.shape.as_slice())?)
    }

    fn from_tensor(t: &Tensor) -> Result<Self> {
        let t = t
            .f_detach()?
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        Ok(StoredTensor {
            shape: t.size(),
            data: Vec::<f32>::try_from(t.f_flatten(0, -1)?)?,
        })
    }
}

/// A decoded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// Tensors by name (sorted).
    pub tensors: BTreeMap<String, StoredTensor>,
    /// The file it was read from, so that errors found later (weights that
    /// do not fit the network) still name it.
    source: Option<std::path::PathBuf>,
}

impl Checkpoint {
    /// Captures every variable of `vs` (and the `extra` tensors, e.g.
    /// optimizer state) with `meta`.
    pub fn from_var_store(
        vs: &nn::VarStore,
        meta: CheckpointMeta,
        extra: &[(String, Tensor)],
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (name, t) in vs.variables() {
            tensors.insert(name, StoredTensor::from_tensor(&t)?);
        }
        for (name, t) in extra {
            tensors.insert(name.clone(), StoredTensor::from_tensor(t)?);
        }
        Ok(Checkpoint {
            meta,
            tensors,
            source: None,
        })
    }

    /// The same checkpoint without training state (what is shipped).
    pub fn model_only(&self) -> Checkpoint {
        let mut meta = self.meta.clone();
        meta.resume = None;
        Checkpoint {
            meta,
            tensors: self
                .tensors
                .iter()
                .filter(|(k, _)| !k.starts_with(OPTIM_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            source: self.source.clone(),
        }
    }

    /// Refuses what would load but cannot give a meaningful answer: a
    /// non-finite weight (a diverged run; every output would be NaN, which
    /// `predict` would report as a class with null probabilities), a model
    /// spacing that is not a positive finite number, and an HU window that
    /// is empty, reversed or not finite.
    pub fn validate(&self) -> Result<()> {
        let spacing = self.meta.preprocess.spacing_mm;
        if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(Error::Checkpoint(format!(
                "model spacing {} x {} x {} mm: every axis must be a positive finite number",
                spacing[0], spacing[1], spacing[2]
            )));
        }
        let w = self.meta.preprocess.window;
        if !(w.lo.is_finite() && w.hi.is_finite() && w.lo < w.hi) {
            return Err(Error::Checkpoint(format!(
                "HU window {} to {} is empty, reversed or not finite",
                w.lo, w.hi
            )));
        }
        for (name, t) in &self.tensors {
            let bad = t.data.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(Error::Checkpoint(format!(
                    "tensor {name} holds {bad} NaN or infinite values (of {})",
                    t.data.len()
                )));
            }
        }
        Ok(())
    }

    /// Encodes as safetensors, metadata under the header key `multir`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| Error::Checkpoint(format!("cannot encode metadata: {e}")))?;
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (
                    k.clone(),
                    t.shape.iter().map(|&s| s as usize).collect(),
                    bytes,
                )
            })
            .collect();
        let views = raw
            .iter()
            .map(|(k, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.as_str(), v))
                    .map_err(|e| Error::Checkpoint(format!("tensor {k}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let info = Some(HashMap::from([("multir".to_string(), json)]));
        safetensors::tensor::serialize(views, &info)
            .map_err(|e| Error::Checkpoint(format!("cannot encode: {e}")))
    }

    /// Decodes a checkpoint, refusing anything that is not a multir
    /// checkpoint of a known version with a valid architecture.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::WrongFormat {
            format: "safetensors",
            reason: e.to_string(),
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::WrongFormat {
            format: "safetensors",
            reason: e.to_string(),
        })?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("multir"))
            .ok_or_else(|| {
                Error::Checkpoint(
                    "a safetensors file, but without multir metadata (not a multir checkpoint)"
                        .into(),
                )
            })?;
        let probe: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::Checkpoint(format!("metadata is not JSON: {e}")))?;
        if probe.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(Error::Checkpoint(
                "metadata lacks format = multir-checkpoint".into(),
            ));
        }
        let version = probe.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != VERSION as u64 {
            return Err(Error::Checkpoint(format!(
                "layout version {version}; this build reads version {VERSION}"
            )));
        }
        let meta: CheckpointMeta = serde_json::from_value(probe)
            .map_err(|e| Error::Checkpoint(format!("metadata: {e}")))?;
        meta.model
            .validate()
            .map_err(|e| Error::Checkpoint(format!("architecture: {e}")))?;
        if meta.classes.len() != meta.model.classes {
            return Err(Error::Checkpoint(format!(
                "{} class names for a {}-class network",
                meta.classes.len(),
                meta.model.classes
            )));
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::Checkpoint(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape = view.shape().iter().map(|&s| s as i64).collect();
            tensors.insert(name, StoredTensor { shape, data });
        }
        let ck = Checkpoint {
            meta,
            tensors,
            source: None,
        };
        ck.validate()?;
        Ok(ck)
    }

    /// Reads a checkpoint file.
    pub fn read_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let read = || -> Result<Self> {
            let len = std::fs::metadata(path)?.len();
            if len > MAX_BYTES {
                return Err(Error::Checkpoint(format!(
                    "{len} bytes, more than the {MAX_BYTES}-byte limit"
                )));
            }
            Self::from_bytes(&std::fs::read(path)?)
        };
        let mut ck = read().in_file(path)?;
        ck.source = Some(path.to_path_buf());
        Ok(ck)
    }

    /// Writes the checkpoint atomically ([`crate::io::write_atomic`]),
    /// after [`Checkpoint::validate`]: a file that would be refused on
    /// reading is not written.
    pub fn write_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.validate().in_file(path)?;
        crate::io::write_atomic(path, |file| {
            file.write_all(&self.to_bytes()?)?;
            Ok(())
        })
    }

    /// Copies the model weights into `vs`, whose variables must match the
    /// checkpoint's model tensors one to one, name and shape. Errors name
    /// the file the checkpoint was read from.
    pub fn load_into(&self, vs: &mut nn::VarStore) -> Result<()> {
        let result = self.load_into_unnamed(vs);
        match &self.source {
            Some(path) => result.in_file(path),
            None => result,
        }
    }

    fn load_into_unnamed(&self, vs: &mut nn::VarStore) -> Result<()> {
        let vars = vs.variables();
        let mut missing: Vec<&String> = vars
            .keys()
            .filter(|k| !self.tensors.contains_key(*k))
            .collect();
        missing.sort();
        let mut unexpected: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !k.starts_with(OPTIM_PREFIX) && !vars.contains_key(*k))
            .collect();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() {
            let example = |names: &[&String]| match names.first() {
                Some(n) => format!(" (e.g. {n})"),
                None => String::new(),
            };
            return Err(Error::Checkpoint(format!(
                "weights do not fit the network: {} missing{}, {} unexpected{}",
                missing.len(),
                example(&missing),
                unexpected.len(),
                example(&unexpected)
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, var) in &vars {
                let stored = &self.tensors[name];
                if stored.shape != var.size() {
                    return Err(Error::Checkpoint(format!(
                        "tensor {name} has shape {:?}, the network wants {:?}",
                        stored.shape,
                        var.size()
                    )));
                }
                let mut v = var.shallow_clone();
                v.f_copy_(&stored.to_tensor()?)?;
            }
            Ok(())
        })
    }

    /// The optimizer-state tensors (`optim.` prefix removed).
    pub fn optimizer_state(&self) -> Result<HashMap<String, Tensor>> {
        self.tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(OPTIM_PREFIX).map(|n| (n, t)))
            .map(|(n, t)| Ok((n.to_string(), t.to_tensor()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::net::MultiRNet;
    use tch::Device;

    fn meta(model: ModelConfig) -> CheckpointMeta {
        CheckpointMeta::new(
            model,
            PreprocessConfig::default(),
            vec!["covid".into(), "cap".into(), "healthy".into()],
        )
    }

    fn net(cfg: &ModelConfig) -> (nn::VarStore, MultiRNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let n = MultiRNet::new(&vs.root(), cfg).unwrap();
        (vs, n)
    }

    #[test]
    fn save_and_load_give_identical_outputs() {
        tch::manual_seed(3);
        let cfg = ModelConfig::tiny();
        let (vs, a) = net(&cfg);
        let ck = Checkpoint::from_var_store(&vs, meta(cfg.clone()), &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        ck.write_path(&path).unwrap();
        let back = Checkpoint::read_path(&path).unwrap();
        assert_eq!(back.meta, ck.meta);
        tch::manual_seed(99); // different initial weights
        let (mut vs2, b) = net(&back.meta.model);
        back.load_into(&mut vs2).unwrap();
        let x = Tensor::rand([2, 1, 8, 16, 16], (Kind::Float, Device::Cpu));
        let (oa, ob) = tch::no_grad(|| (a.forward(&x).unwrap(), b.forward(&x).unwrap()));
        assert!(oa.seg_logits.equal(&ob.seg_logits));
        assert!(oa.class_logits.equal(&ob.class_logits));
    }

    #[test]
    fn mismatched_and_malformed_checkpoints_are_clear_errors() {
        let (vs, _) = net(&ModelConfig::tiny());
        let ck = Checkpoint::from_var_store(&vs, meta(ModelConfig::tiny()), &[]).unwrap();
        // Weights of a different architecture.
        let mut other = ModelConfig::tiny();
        other.widths = vec![4, 8, 16];
        let (mut vs2, _) = net(&other);
        let e = ck.load_into(&mut vs2).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        let mut no_ra = ModelConfig::tiny();
        no_ra.reverse_attention = false;
        let (mut vs3, _) = net(&no_ra);
        let e = ck.load_into(&mut vs3).unwrap_err().to_string();
        assert!(e.contains("unexpected"), "{e}");
        // Not safetensors at all.
        let e = Checkpoint::from_bytes(b"hello world, not a checkpoint")
            .unwrap_err()
            .to_string();
        assert!(e.contains("safetensors"), "{e}");
        // Safetensors without our metadata.
        let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![2], &bytes).unwrap();
        let plain = safetensors::tensor::serialize([("x", view)], &None).unwrap();
        let e = Checkpoint::from_bytes(&plain).unwrap_err().to_string();
        assert!(e.contains("not a multir checkpoint"), "{e}");
        // A future version and a class-count mismatch.
        let mut m = meta(ModelConfig::tiny());
        m.version = 7;
        let e = Checkpoint {
            meta: m,
            tensors: ck.tensors.clone(),
            source: None,
        }
        .to_bytes()
        .map(|b| Checkpoint::from_bytes(&b));
        assert!(e.unwrap().unwrap_err().to_string().contains("version 7"));
        let mut m = meta(ModelConfig::tiny());
        m.classes.pop();
        let b = Checkpoint {
            meta: m,
            tensors: ck.tensors.clone(),
            source: None,
        }
        .to_bytes()
        .unwrap();
        assert!(
            Checkpoint::from_bytes(&b)
                .unwrap_err()
                .to_string()
                .contains("class names")
        );
        // A missing file names the file.
        let e = Checkpoint::read_path("/nonexistent/m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/m.safetensors"), "{e}");
    }

    /// Each defect written to a file (through `to_bytes`, which does not
    /// validate), then read: refused, naming the file and the problem.
    #[test]
    fn nonsense_weights_and_preprocessing_are_refused_naming_the_file() {
        let (vs, _) = net(&ModelConfig::tiny());
        let good = Checkpoint::from_var_store(&vs, meta(ModelConfig::tiny()), &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let name = good.tensors.keys().nth(1).unwrap().clone();
        let mut cases: Vec<(&str, Checkpoint, String)> = Vec::new();
        for (tag, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
            let mut ck = good.clone();
            ck.tensors.get_mut(&name).unwrap().data[0] = bad;
            cases.push((tag, ck, format!("tensor {name} holds 1 NaN or infinite")));
        }
        for (tag, s) in [("zero", 0.0), ("negative", -0.8)] {
            let mut ck = good.clone();
            ck.meta.preprocess.spacing_mm[1] = s;
            cases.push((tag, ck, "model spacing".into()));
        }
        for (tag, lo, hi) in [("reversed", 150.0, -1350.0), ("empty", 40.0, 40.0)] {
            let mut ck = good.clone();
            ck.meta.preprocess.window.lo = lo;
            ck.meta.preprocess.window.hi = hi;
            cases.push((tag, ck, "HU window".into()));
        }
        for (tag, ck, want) in cases {
            let path = dir.path().join(format!("{tag}.safetensors"));
            std::fs::write(&path, ck.to_bytes().unwrap()).unwrap();
            let e = Checkpoint::read_path(&path).unwrap_err().to_string();
            assert!(
                e.starts_with(&path.display().to_string()) && e.contains(&want),
                "{tag}: {e}"
            );
            // Nor is such a file written.
            let out = dir.path().join(format!("{tag}-out.safetensors"));
            let e = ck.write_path(&out).unwrap_err().to_string();
            assert!(e.contains(&want) && e.contains("-out.safetensors"), "{e}");
            assert!(!out.exists());
        }
    }

    #[test]
    fn weights_that_do_not_fit_name_the_file_without_debug_text() {
        let (vs, _) = net(&ModelConfig::tiny());
        let mut ck = Checkpoint::from_var_store(&vs, meta(ModelConfig::tiny()), &[]).unwrap();
        ck.tensors.insert(
            "extra.tensor".into(),
            StoredTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.safetensors");
        ck.write_path(&path).unwrap();
        let back = Checkpoint::read_path(&path).unwrap();
        let (mut vs2, _) = net(&ModelConfig::tiny());
        let e = back.load_into(&mut vs2).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string())
                && e.contains("1 unexpected (e.g. extra.tensor)")
                && !e.contains("Some(")
                && !e.contains("None"),
            "{e}"
        );
    }

    #[test]
    fn model_only_drops_optimizer_state() {
        let (vs, _) = net(&ModelConfig::tiny());
        let extra = vec![(
            format!("{OPTIM_PREFIX}m.x"),
            Tensor::ones([3], (Kind::Float, Device::Cpu)),
        )];
        let ck = Checkpoint::from_var_store(&vs, meta(ModelConfig::tiny()), &extra).unwrap();
        assert_eq!(ck.optimizer_state().unwrap().len(), 1);
        let m = ck.model_only();
        assert!(m.optimizer_state().unwrap().is_empty());
        assert_eq!(m.tensors.len(), vs.variables().len());
    }
}
