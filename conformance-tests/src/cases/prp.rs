//! PRP edge cases (NVMe Base §4.3.1).
use crate::backend::Backend; use crate::runner::Case; /// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> { vec![] }
