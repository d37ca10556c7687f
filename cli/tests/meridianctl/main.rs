//! `meridianctl` as a user runs it: the real binary, real files, exit codes and output;
//! cluster commands against real API servers of the hermetic testbed.
//!
//! One test binary; one module per command group.

mod support;

mod ca;
mod cluster;
mod simulate;
