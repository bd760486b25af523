//! Synthetic chest-CT phantoms with exact lesion ground truth.
