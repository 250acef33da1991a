//! What a forward pass can hand out for the stability diagnostics.

use candle_core::Tensor;

/// Intermediate tensors of one forward pass, filled only when asked for
/// (`forward_with_taps`); a plain `forward` records nothing.
#[derive(Debug, Clone, Default)]
pub struct Taps {
    /// Long skips before scaling, index `i - 1` for skip `i` (outermost first).
    pub skips: Vec<Tensor>,
    /// The same skips after scaling, as merged by the decoder.
    pub scaled_skips: Vec<Tensor>,
    /// LS gates (outermost skip first), empty for constant modes.
    pub gates: Vec<Tensor>,
    /// Every block's output in execution order: encoder blocks, mid-block, decoder blocks.
    pub blocks: Vec<Tensor>,
}
