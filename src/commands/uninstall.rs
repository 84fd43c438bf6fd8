//! `atomic-preload uninstall NAME`: atomic's `uninstall` for both kinds of entry.
//!
//! A system container (a checkout named NAME exists) is removed by
//! [`system::uninstall`](crate::stages::system::uninstall). Otherwise NAME is an engine's entry
//! (its `engine:`, else the host's): its container is removed, the image's `UNINSTALL` label is run with the same substitutions
//! as the INSTALL label (NAME, IMAGE, CONFDIR, LOGDIR, DATADIR, the entry's setvalues),
//! and the install mark is dropped, so a later start installs again. The image stays in
//! the engine (its archive would load it again anyway).

use crate::cli::{EngineArgs, InstallArgs, SystemNameArgs, UninstallArgs};
use crate::config::Named;
use crate::engines;
use crate::generator;
use crate::runtime::RuntimeError;
use crate::runtime::marks::Marks;
use crate::stages::install::run_label;

pub fn run(args: &UninstallArgs) -> Result<(), RuntimeError> {
    // Checked before it names any file or container: never a path.
    if !crate::config::is_valid_name(&args.name) {
        return Err(RuntimeError::Usage(format!(
            "{:?} is not a valid container name",
            args.name
        )));
    }
    let system = SystemNameArgs {
        name: args.name.clone(),
        paths: args.paths.clone(),
    };
    if crate::stages::system::deploy::is_installed(&args.paths, &args.name) {
        return crate::stages::system::uninstall(&system);
    }
    let entry = generator::load_effective(&args.config)
        .items
        .into_iter()
        .find_map(|item| match item {
            Named::Valid(e) if e.name == args.name => Some(e),
            _ => None,
        });
    if entry.as_ref().is_some_and(|e| e.is_system()) {
        println!("{} is not installed as a system container", args.name);
        return Ok(());
    }
    let image = match (&args.image, &entry) {
        (Some(image), _) => image.clone(),
        (None, Some(entry)) => entry.image.clone(),
        (None, None) => {
            return Err(RuntimeError::Usage(format!(
                "{} is not an installed system container nor an entry of {}; give --image for an engine's image",
                args.name,
                args.config.display()
            )));
        }
    };
    let install = InstallArgs {
        name: args.name.clone(),
        image: image.clone(),
        setvalues: entry
            .iter()
            .flat_map(|e| e.install.iter().flat_map(|i| i.setvalues.clone()))
            .collect(),
        host_root: "/".into(),
        engine: EngineArgs {
            engine: entry
                .as_ref()
                .and_then(|e| e.engine)
                .map_or("auto", |kind| kind.as_str())
                .into(),
            docker: args.docker.clone(),
            podman: args.podman.clone(),
            ctr: crate::paths::CTR.into(),
            state_dir: args.paths.state_dir.clone(),
        },
        extra_args: vec![],
    };
    let engine = engines::open(&install.engine);
    let engine = engine.as_ref();
    engine.ping()?;
    // The container first, as atomic did; "no such container" is fine.
    engine.remove_container(&args.name);
    if engine.image(&image)?.is_some() {
        let label = engine.label(&image, "UNINSTALL")?;
        if label.trim().is_empty() {
            println!("{}: image {image} has no UNINSTALL label", args.name);
        } else {
            run_label("UNINSTALL", &label, &install, engine)?;
        }
    } else {
        println!(
            "{}: image {image} is not in the engine; nothing to run",
            args.name
        );
    }
    Marks::new(&args.paths.state_dir, "installed")
        .and_then(|m| m.remove(&args.name))
        .map_err(RuntimeError::State)?;
    println!("{} uninstalled", args.name);
    Ok(())
}
