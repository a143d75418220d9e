//! `envrun install DIR`: what the injector's init container runs. Copies this very binary
//! (`/proc/self/exe`) to `DIR/envrun` (mode 0555) and the CA bundle given in
//! `KINKO_INSTALL_CA_PEM` to `DIR/ca.pem` (mode 0444). No shell, no network, no secret: a CA is
//! public. Each file is written under a temporary name and renamed, so a restarted init
//! container never leaves a half-written file for the app containers.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The variable holding the CA bundle (PEM) to install.
pub const CA_ENV: &str = "KINKO_INSTALL_CA_PEM";

/// `envrun install DIR` with the process's own binary and environment.
pub fn run(args: &[String]) -> Result<(), String> {
    let [dir] = args else {
        return Err(
            "usage: envrun install DIR (the CA bundle comes from KINKO_INSTALL_CA_PEM)".into(),
        );
    };
    let ca = std::env::var(CA_ENV).unwrap_or_default();
    install(Path::new(dir), Path::new("/proc/self/exe"), &ca)
}

/// Copies `exe` to `dir/envrun` and writes `ca_pem` to `dir/ca.pem`.
pub fn install(dir: &Path, exe: &Path, ca_pem: &str) -> Result<(), String> {
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{CA_ENV} holds no PEM certificate; the injector passes the CA bundle Pods must trust"
        ));
    }
    let binary = std::fs::read(exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
    write(dir, "envrun", &binary, 0o555)?;
    write(dir, "ca.pem", ca_pem.as_bytes(), 0o444)?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let target = dir.join(name);
    let temporary = dir.join(format!(".{name}.{}", std::process::id()));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", target.display());
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    std::fs::rename(&temporary, &target).map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn copies_the_binary_and_the_ca_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("source");
        std::fs::write(&exe, b"\x7fELF binary").unwrap();
        let out = dir.path().join("kinko");
        std::fs::create_dir(&out).unwrap();
        install(&out, &exe, CA).unwrap();
        // Twice, as a restarted init container does.
        install(&out, &exe, CA).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            std::fs::read(out.join("envrun")).unwrap(),
            b"\x7fELF binary"
        );
        assert_eq!(mode(&out.join("envrun")), 0o555);
        assert_eq!(std::fs::read_to_string(out.join("ca.pem")).unwrap(), CA);
        assert_eq!(mode(&out.join("ca.pem")), 0o444);
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn refuses_without_a_ca_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("source");
        std::fs::write(&exe, b"x").unwrap();
        let error = install(dir.path(), &exe, "").unwrap_err();
        assert!(error.contains(CA_ENV), "{error}");
        let error = install(&dir.path().join("missing"), &exe, CA).unwrap_err();
        assert!(error.contains("missing"), "{error}");
        assert!(run(&[]).is_err());
    }
}
