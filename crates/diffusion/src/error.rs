//! The one error of this crate that is not a tensor computation's.

/// A name (of a sampler, a beta schedule, a noise schedule) that is not known, with the names that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}`: expected {expected}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
    pub expected: String,
}
