//! The operator's commands: `stage` (archives and entries into an image root), `status`
//! (what is loaded, installed and running, or will be), `refresh` (late config applied
//! in the same boot), `uninstall` (as atomic did). The units' own stages are in
//! [`crate::stages`].

pub mod refresh;
pub mod stage;
pub mod status;
pub mod uninstall;
