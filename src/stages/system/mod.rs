//! System containers: atomic's `install --system` done natively — no OSTree, no Docker.
//!
//! The install stage finds the image in an archive under `<preload-dir>/ostree/`, checks
//! it out into a new deployment `<checkout-dir>/NAME.N` (built under a temporary name and
//! renamed into place), renders the image's `/exports` templates with atomic's values,
//! copies its host files, installs `NAME.service` and tmpfiles, and swaps the `NAME`
//! symlink. An unchanged image ID and values leave everything as it is.

pub mod archive;
pub mod checkout;
pub mod deploy;
pub mod hostfiles;
pub mod layer;
pub mod rootfs;
pub mod template;
pub mod values;

pub use deploy::{install, rollback, start, uninstall};
