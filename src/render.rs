//! Units as data → unit file text, through the tera templates in `generator/`.
//!
//! Templates are embedded at compile time. Every value is escaped here, before the
//! template sees it (see `escape`), so a template can only place text, never shape it.

use crate::escape::{self, EscapeError};
use crate::plan::{Command, ContainerUnit, FailingUnit, ServiceKind, Unit};
use serde::Serialize;
use std::sync::OnceLock;

const CONTAINER: &str = "container.service";
const FAILING: &str = "failing.service";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{unit}: {source}")]
    Escape { unit: String, source: EscapeError },
    #[error("{unit}: template: {message}")]
    Template { unit: String, message: String },
}

/// A finished unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub name: String,
    pub text: String,
}

fn templates() -> Result<&'static tera::Tera, String> {
    static TERA: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut tera = tera::Tera::new();
        // Unit files are not HTML.
        tera.autoescape_on(Vec::<&str>::new());
        tera.add_raw_templates([
            (CONTAINER, include_str!("../generator/container.service")),
            (FAILING, include_str!("../generator/failing.service")),
        ])
        .map_err(|e| e.to_string())?;
        Ok(tera)
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn line(command: &Command) -> Result<String, EscapeError> {
    escape::command_line(if command.ignore_failure { "-" } else { "" }, &command.argv)
}

fn lines(commands: &[Command]) -> Result<Vec<String>, EscapeError> {
    commands.iter().map(line).collect()
}

#[derive(Serialize)]
struct ContainerContext {
    source: String,
    description: String,
    mounts: String,
    engine_unit: Option<String>,
    before: String,
    wants_network: bool,
    name: String,
    kind: &'static str,
    start_pre: Vec<String>,
    start: Vec<String>,
    stop: Option<String>,
    stop_post: Vec<String>,
    environment: Vec<String>,
    delegate: bool,
    kill_mode: Option<&'static str>,
}

#[derive(Serialize)]
struct FailingContext {
    source: String,
    description: String,
    syslog_identifier: String,
    start: String,
}

fn container_context(source: &str, u: &ContainerUnit) -> Result<ContainerContext, EscapeError> {
    Ok(ContainerContext {
        source: escape::setting_value(source)?,
        description: escape::setting_value(&u.description)?,
        mounts: u
            .mounts
            .iter()
            .map(|m| escape::setting_value(m))
            .collect::<Result<Vec<_>, _>>()?
            .join(" "),
        engine_unit: u
            .engine_unit
            .as_deref()
            .map(escape::setting_value)
            .transpose()?,
        before: u
            .before
            .iter()
            .map(|b| escape::setting_value(b))
            .collect::<Result<Vec<_>, _>>()?
            .join(" "),
        wants_network: u.wants_network,
        name: escape::setting_value(&u.name)?,
        kind: match u.kind {
            ServiceKind::Oneshot => "oneshot",
            ServiceKind::Exec => "exec",
            ServiceKind::Notify => "notify",
        },
        start_pre: lines(&u.start_pre)?,
        start: lines(&u.start)?,
        stop: u.stop.as_ref().map(line).transpose()?,
        stop_post: lines(&u.stop_post)?,
        // Fixed by the engine's plan, specifiers included (`%n`): placed as they are.
        environment: u.environment.iter().map(|e| e.to_string()).collect(),
        delegate: u.delegate,
        kill_mode: u.kill_mode,
    })
}

fn failing_context(source: &str, u: &FailingUnit) -> Result<FailingContext, EscapeError> {
    Ok(FailingContext {
        source: escape::setting_value(source)?,
        description: escape::setting_value(&u.description)?,
        syslog_identifier: escape::setting_value(&u.syslog_identifier)?,
        start: line(&u.start)?,
    })
}

/// Render one unit.
pub fn render_unit(source: &str, unit: &Unit) -> Result<UnitFile, RenderError> {
    let name = unit.name().to_owned();
    let escape_err = |source| RenderError::Escape {
        unit: name.clone(),
        source,
    };
    let template_err = |message: String| RenderError::Template {
        unit: name.clone(),
        message,
    };
    let tera = templates().map_err(template_err)?;
    let (template, context) = match unit {
        Unit::Container(u) => (
            CONTAINER,
            tera::Context::from_serialize(&container_context(source, u).map_err(escape_err)?),
        ),
        Unit::Failing(u) => (
            FAILING,
            tera::Context::from_serialize(&failing_context(source, u).map_err(escape_err)?),
        ),
    };
    let context = context.map_err(|e| template_err(e.to_string()))?;
    let mut text = tera
        .render(template, &context)
        .map_err(|e| template_err(e.to_string()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(UnitFile { name, text })
}
