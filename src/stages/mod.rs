//! What the generated units run: `load` (archives into the engine), `install` (the
//! image's INSTALL label), `run` (the container, under systemd), and for system
//! containers `install-system` / `start-system` (a checkout run by runc, no engine).
//! Engines are asked through [`crate::engines`]; records and helpers shared with the
//! operator's commands are in [`crate::runtime`].

pub mod install;
pub mod load;
pub mod run;
pub mod system;
