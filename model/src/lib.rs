//! emberprof's one vocabulary: what the probes capture (stacks of addresses, samples), what
//! the symbolizer makes of it (frames, locations, stacks), what the exporters write
//! (profiles of a kind, latency histograms) and what describes a process (attributes).
//! Everything else speaks it; it depends on nothing.

mod attributes;
mod captured;
mod frame;
mod health;
mod histogram;
mod process;
mod profile;

pub use attributes::{AttrValue, Attributes};
pub use captured::{python_stack, CapturedStack, KernelSample, ProbeHit, StackCut, StackLoss};
pub use frame::{Frame, FrameKind, Location, Module, Segment, Stack};
pub use health::{HealthCounter, HealthValue};
pub use histogram::{Log2Histogram, HIST_SLOTS};
pub use process::effective_capabilities;
pub use profile::{Profile, ProfileBuilder, ProfileKind, Sample, ValueType};
