//! What the scenario programs are expected to produce, shared by the host
//! integration tests (`agent/tests/detection.rs`) and the kernel matrix
//! (`sockerr-scenario matrix`, booted by `cargo xtask matrix`); and eBPF
//! program statistics, read by the matrix and the benchmark.

pub mod bpf_stats;
pub mod table;
