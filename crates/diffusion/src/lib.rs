//! Noise schedules, training objectives and samplers for scalelong, independent of the backbone.
//!
//! This crate is empty for now: the VP-SDE and DDPM schedules, the eps/x0/v objectives and the
//! samplers (Euler ODE/SDE, DPM-Solver, DDIM, DPM-Solver++, DDPM) land with their parity checks
//! against the reference solvers. Nothing here pretends to work before then.
