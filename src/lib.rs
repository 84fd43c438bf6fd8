//! atomic-preload: a systemd generator that turns config.yaml into one
//! `preload-<name>.service` per container, and the runtime helper those units call.
//!
//! The generator's pipeline, one module per step:
//! [`config`] (parse, validate: pure) → [`plan`] (units as data) → [`render`] (templates)
//! → [`write`] (files and symlinks). The helper's side: [`stages`] (what the units run),
//! [`engines`] (the seam to Docker and Podman, one module each), [`commands`] (stage,
//! status, refresh, uninstall), [`runtime`] (what they share). [`escape`] owns
//! unit-file quoting, [`log`] the kmsg/stderr logger.

pub mod bounded;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engines;
pub mod escape;
pub mod generator;
pub mod log;
pub mod paths;
pub mod plan;
pub mod render;
pub mod runtime;
pub mod stages;
pub mod trust;
pub mod unit_check;
pub mod write;
