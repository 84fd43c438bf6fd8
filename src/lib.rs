//! atomic-preload: a systemd generator that turns config.yaml into one
//! `preload-<name>.service` per container, and the runtime helper those units call.
//!
//! The generator's pipeline, one module per step:
//! [`config`] (parse, validate: pure) → [`plan`] (units as data) → [`render`] (templates)
//! → [`write`] (files and symlinks). [`runtime`] holds the stages the units run
//! (load, install), [`escape`] owns unit-file quoting, [`log`] the kmsg/stderr logger.

pub mod bounded;
pub mod cli;
pub mod config;
pub mod engine;
pub mod escape;
pub mod generator;
pub mod log;
pub mod paths;
pub mod plan;
pub mod render;
pub mod runtime;
pub mod trust;
pub mod unit_check;
pub mod write;
