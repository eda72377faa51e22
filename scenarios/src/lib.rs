//! What the scenario programs are expected to produce, shared by the host
//! integration tests (`agent/tests/detection.rs`) and the kernel matrix
//! (`sockerr-scenario matrix`, booted by `cargo xtask matrix`); and eBPF
//! program statistics, read by the matrix and the benchmark; the matrix
//! runner's summary line, one type for the runner that writes it and
//! `cargo xtask matrix` that reads it.

pub mod bpf_stats;
pub mod summary;
pub mod table;
