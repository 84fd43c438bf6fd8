//! The variables a system image's templates see: atomic's `_amend_values`, in its order.
//!
//! 1. `setvalues` (`--set KEY=VALUE`);
//! 2. if still absent: RUN_DIRECTORY=/run, PIDFILE=$RUN_DIRECTORY/container-NAME.pid,
//!    CONF_DIRECTORY=/etc, STATE_DIRECTORY=/var/lib, ALL_PROCESS_CAPABILITIES, RUNTIME,
//!    ATOMIC (our helper);
//! 3. manifest.json's `defaultValues` for keys still missing;
//! 4. UUID if absent;
//! 5. always overwritten: DESTDIR, NAME, EXEC_START, EXEC_STOP, EXEC_STARTPRE,
//!    EXEC_STOPPOST, HOST_UID, HOST_GID, IMAGE_NAME, IMAGE_ID.

use std::collections::BTreeMap;

pub type Values = BTreeMap<String, String>;

/// Capability names by number, as the kernel numbers them (include/uapi/linux/capability.h).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// atomic's ALL_PROCESS_CAPABILITIES: every capability this kernel has, as JSON strings
/// one per line (`"CAP_CHOWN",\n"CAP_KILL"\n`), ready to paste into a config template.
pub fn all_capabilities(cap_last_cap: usize) -> String {
    let known = &CAPABILITIES[..(cap_last_cap + 1).min(CAPABILITIES.len())];
    let quoted: Vec<String> = known.iter().map(|c| format!("\"{c}\"")).collect();
    format!("{}\n", quoted.join(",\n"))
}

/// The kernel's highest capability number (`/proc/sys/kernel/cap_last_cap`).
pub fn cap_last_cap() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// How a JSON default value reads in a template: Python's `str()` of it, as atomic had.
fn python_str(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(true) => "True".into(),
        serde_json::Value::Bool(false) => "False".into(),
        serde_json::Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// What the install knows when it computes the values.
pub struct Facts<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub image_id: &'a str,
    /// The deployment's final path (`…/NAME.N`).
    pub destdir: &'a str,
    pub runtime: &'a str,
    pub helper: &'a str,
    pub uuid: String,
    pub cap_last_cap: usize,
}

/// The service's start/stop command lines: runc in the foreground, under systemd's
/// supervision; a stale container of the same name is deleted first and after.
pub fn exec_directives(runtime: &str, name: &str) -> [String; 4] {
    [
        format!("{runtime} --systemd-cgroup run '{name}'"),
        format!("{runtime} --systemd-cgroup kill '{name}' TERM"),
        format!("-{runtime} --systemd-cgroup delete --force '{name}'"),
        format!("-{runtime} --systemd-cgroup delete --force '{name}'"),
    ]
}

pub fn amend(
    setvalues: &[(String, String)],
    manifest: Option<&serde_json::Value>,
    facts: &Facts<'_>,
) -> Values {
    let mut values: Values = setvalues.iter().cloned().collect();
    let mut default = |key: &str, value: String| {
        values.entry(key.to_owned()).or_insert(value);
    };
    default("RUN_DIRECTORY", "/run".into());
    let pidfile = format!("{}/container-{}.pid", values["RUN_DIRECTORY"], facts.name);
    let mut default = |key: &str, value: String| {
        values.entry(key.to_owned()).or_insert(value);
    };
    default("PIDFILE", pidfile);
    default("CONF_DIRECTORY", "/etc".into());
    default("STATE_DIRECTORY", "/var/lib".into());
    default(
        "ALL_PROCESS_CAPABILITIES",
        all_capabilities(facts.cap_last_cap),
    );
    default("RUNTIME", facts.runtime.into());
    default("ATOMIC", facts.helper.into());
    if let Some(defaults) = manifest
        .and_then(|m| m.get("defaultValues"))
        .and_then(|d| d.as_object())
    {
        for (key, value) in defaults {
            default(key, python_str(value));
        }
    }
    default("UUID", facts.uuid.clone());
    let [start, stop, start_pre, stop_post] = exec_directives(facts.runtime, facts.name);
    for (key, value) in [
        ("DESTDIR", facts.destdir.to_owned()),
        ("NAME", facts.name.to_owned()),
        ("EXEC_START", start),
        ("EXEC_STOP", stop),
        ("EXEC_STARTPRE", start_pre),
        ("EXEC_STOPPOST", stop_post),
        ("HOST_UID", "0".into()),
        ("HOST_GID", "0".into()),
        ("IMAGE_NAME", facts.image.to_owned()),
        ("IMAGE_ID", facts.image_id.to_owned()),
    ] {
        values.insert(key.to_owned(), value);
    }
    values
}

/// A random version-4 UUID from the kernel's generator.
pub fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "00000000-0000-4000-8000-000000000000".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts<'static> {
        Facts {
            name: "etcd",
            image: "docker.io/gscrivano/etcd",
            image_id: "sha256:abc",
            destdir: "/var/lib/containers/atomic/etcd.0",
            runtime: "/usr/sbin/runc",
            helper: "/usr/bin/atomic-preload",
            uuid: "u-1".into(),
            cap_last_cap: 40,
        }
    }

    #[test]
    fn precedence_is_atomics() {
        let manifest = serde_json::json!({"defaultValues": {
            "ETCD_NAME": "default", "PORT": 2379, "FLAG": true, "RUN_DIRECTORY": "/ignored",
            "NAME": "ignored", "UUID": "from-manifest"
        }});
        let set = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let v = amend(
            &[
                set("ETCD_NAME", "myetcd"),
                set("RUN_DIRECTORY", "/srv/run"),
                set("NAME", "x"),
                set("IMAGE_ID", "x"),
            ],
            Some(&manifest),
            &facts(),
        );
        assert_eq!(v["ETCD_NAME"], "myetcd", "setvalues beat defaultValues");
        assert_eq!(
            v["RUN_DIRECTORY"], "/srv/run",
            "setvalues beat built-in defaults"
        );
        assert_eq!(
            v["PIDFILE"], "/srv/run/container-etcd.pid",
            "PIDFILE follows RUN_DIRECTORY"
        );
        assert_eq!(v["PORT"], "2379");
        assert_eq!(v["FLAG"], "True", "Python's str() of a JSON boolean");
        assert_eq!(
            v["UUID"], "from-manifest",
            "defaultValues come before the UUID default"
        );
        assert_eq!(v["NAME"], "etcd", "NAME is always overwritten");
        assert_eq!(v["IMAGE_ID"], "sha256:abc");
        assert_eq!(v["DESTDIR"], "/var/lib/containers/atomic/etcd.0");
        assert_eq!(v["CONF_DIRECTORY"], "/etc");
        assert_eq!(v["STATE_DIRECTORY"], "/var/lib");
        assert_eq!(v["HOST_UID"], "0");
        assert!(v["EXEC_START"].starts_with("/usr/sbin/runc --systemd-cgroup run 'etcd'"));
        assert!(v["ALL_PROCESS_CAPABILITIES"].starts_with("\"CAP_CHOWN\",\n"));
        assert!(v["ALL_PROCESS_CAPABILITIES"].ends_with("\"CAP_CHECKPOINT_RESTORE\"\n"));
        assert_eq!(
            all_capabilities(1),
            "\"CAP_CHOWN\",\n\"CAP_DAC_OVERRIDE\"\n"
        );
    }
}
