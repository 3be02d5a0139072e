//! Modules of the `neurstore-family` benchmark.

pub mod eval;
pub mod ours;
pub mod paper;
pub mod recall;
pub mod table;
pub mod workloads;
