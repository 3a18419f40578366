//! The project's microVM tooling (`tests/vm/microvm.sh`) as the bench uses it:
//! install, an initramfs, start, the run dir's `env` file, stop. The script
//! owns the recipe (kernel, modules, QEMU and vhost-device-vsock flags, the
//! KVM/TCG choice, its cache: `SOCKFWD_VM_CACHE`, default `.cache/microvm`);
//! this module only calls its verbs and keeps the VM from outliving the bench.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::KernelChoice;
use crate::procs;
use crate::sys::{Ctx, Res};

/// The tooling script, the kernel it boots, and where its output goes.
pub struct Tooling {
    script: PathBuf,
    kernel: &'static str,
    log: PathBuf,
}

/// What one started VM's `env` file says.
#[derive(Debug, Clone)]
pub struct VmEnv {
    /// Hybrid vsock socket on the host (`CONNECT port` for host to guest;
    /// `<uds>_<port>` is dialled for guest to host).
    pub uds: PathBuf,
    /// QEMU's pid.
    pub qemu_pid: i32,
    /// vhost-device-vsock's pid.
    pub vdv_pid: i32,
    /// kvm or tcg.
    pub accel: String,
    /// The guest kernel's release.
    pub kernel_release: String,
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

impl Tooling {
    /// The workspace's `tests/vm/microvm.sh`, booting `kernel`; its output goes to `log`.
    pub fn locate(log: &Path, kernel: KernelChoice) -> Res<Self> {
        let script = procs::workspace_dir().join("tests/vm/microvm.sh");
        if !script.is_file() {
            return Err(format!(
                "the microVM tooling {} is missing",
                script.display()
            ));
        }
        Ok(Self {
            script,
            kernel: match kernel {
                KernelChoice::V6_1 => "stable",
                KernelChoice::V6_12 => "backports",
            },
            log: log.to_path_buf(),
        })
    }

    fn command(&self, verb: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.script).arg(verb).stdin(Stdio::null());
        cmd
    }

    /// Starts a verb with its output appended to the log.
    fn spawn(&self, verb: &str, args: &[&OsStr], own_group: bool) -> Res<Child> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_ctx(|| format!("open {}", self.log.display()))?;
        let err = out.try_clone().ctx("dup log")?;
        let mut cmd = self.command(verb);
        cmd.args(args).stdout(out).stderr(err);
        if own_group {
            cmd.process_group(0);
        }
        procs::unblock_signals_in_child(&mut cmd, false);
        cmd.spawn()
            .with_ctx(|| format!("run {} {verb}", self.script.display()))
    }

    /// Waits for a verb; fails with the log's tail.
    fn wait(&self, verb: &str, mut child: Child) -> Res<()> {
        let status = child.wait().ctx("wait for microvm.sh")?;
        if status.success() {
            return Ok(());
        }
        Err(format!(
            "microvm.sh {verb} failed ({status}); end of {}:\n{}",
            self.log.display(),
            tail(&self.log, 15)
        ))
    }

    fn run(&self, verb: &str, args: &[&OsStr]) -> Res<()> {
        let child = self.spawn(verb, args, false)?;
        self.wait(verb, child)
    }

    /// Installs (or checks, when cached) QEMU, the kernel and vhost-device-vsock.
    pub fn install(&self) -> Res<()> {
        self.run("install", &["--kernel".as_ref(), self.kernel.as_ref()])
    }

    /// What the header names of the tooling's `versions`: QEMU,
    /// vhost-device-vsock and the booted kernel's package.
    pub fn versions(&self) -> String {
        let out = self.command("versions").stderr(Stdio::null()).output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let kernel_key = format!("kernel.{}", self.kernel);
        let mut parts = Vec::new();
        for (key, label) in [
            ("qemu-system-x86", "qemu-system-x86"),
            ("vhost-device-vsock", "vhost-device-vsock"),
            (kernel_key.as_str(), "kernel"),
        ] {
            if let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            {
                // "1:7.2+dfsg-7 (QEMU emulator version 7.2.22 (...))" -> the package version
                let v = if key == "qemu-system-x86" {
                    v.split_whitespace().next().unwrap_or(v)
                } else {
                    v
                };
                parts.push(format!("{label} {v}"));
            }
        }
        parts.join(", ")
    }

    /// Packs `payloads` into a busybox initramfs whose init runs `cmd`.
    pub fn initramfs(&self, out: &Path, payloads: &[&Path], cmd: &str) -> Res<()> {
        let mut args: Vec<&OsStr> = vec![
            "--out".as_ref(),
            out.as_os_str(),
            "--kernel".as_ref(),
            self.kernel.as_ref(),
        ];
        for p in payloads {
            args.push("--payload".as_ref());
            args.push(p.as_os_str());
        }
        args.push("--cmd".as_ref());
        args.push(cmd.as_ref());
        self.run("initramfs", &args)
    }

    /// Boots the VM; it is stopped when the returned [`Machine`] is dropped.
    pub fn start(
        &self,
        run_dir: &Path,
        initramfs: &Path,
        vcpus: u32,
        mem_mib: u32,
        append: &str,
    ) -> Res<Machine<'_>> {
        let (smp, mem) = (vcpus.to_string(), mem_mib.to_string());
        let args: Vec<&OsStr> = vec![
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
            "--initramfs".as_ref(),
            initramfs.as_os_str(),
            "--cid".as_ref(),
            "3".as_ref(),
            "--kernel".as_ref(),
            self.kernel.as_ref(),
            "--cpus".as_ref(),
            smp.as_ref(),
            "--mem".as_ref(),
            mem.as_ref(),
            "--accel".as_ref(),
            "auto".as_ref(),
            "--append".as_ref(),
            append.as_ref(),
        ];
        let mut machine = Machine {
            tooling: self,
            run_dir: run_dir.to_path_buf(),
            group: None,
            env: None,
        };
        // QEMU and vhost-device-vsock stay in the script's process group after
        // it exits, so an interrupted bench can kill them (procs::kill_all).
        let child = self.spawn("start", &args, true)?;
        let pg = i32::try_from(child.id()).ctx("pid")?;
        procs::register_group(pg);
        machine.group = Some(pg);
        self.wait("start", child)?;
        let env_path = run_dir.join("env");
        let text =
            fs::read_to_string(&env_path).with_ctx(|| format!("read {}", env_path.display()))?;
        let env = parse_env(&text);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .ok_or_else(|| format!("{}: no {k}", env_path.display()))
        };
        let pid = |k: &str| -> Res<i32> {
            get(k)?
                .parse()
                .with_ctx(|| format!("{k} in {}", env_path.display()))
        };
        machine.env = Some(VmEnv {
            uds: PathBuf::from(get("MICROVM_HVSOCK")?),
            qemu_pid: pid("MICROVM_QEMU_PID")?,
            vdv_pid: pid("MICROVM_VHOST_PID")?,
            accel: get("MICROVM_ACCEL")?,
            kernel_release: get("MICROVM_KERNEL_RELEASE")?,
        });
        Ok(machine)
    }
}

/// A running VM; dropping it stops QEMU and vhost-device-vsock.
pub struct Machine<'t> {
    tooling: &'t Tooling,
    run_dir: PathBuf,
    group: Option<i32>,
    env: Option<VmEnv>,
}

impl Machine<'_> {
    /// The started VM's `env` file.
    pub fn env(&self) -> Res<&VmEnv> {
        self.env
            .as_ref()
            .ok_or_else(|| "the VM did not start".to_string())
    }

    /// Fails if QEMU has exited.
    pub fn check_alive(&self) -> Res<()> {
        let env = self.env()?;
        let stat = fs::read_to_string(format!("/proc/{}/stat", env.qemu_pid)).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split_whitespace().next());
        match state {
            Some(s) if s != "Z" && s != "X" => Ok(()),
            _ => Err(format!(
                "QEMU (pid {}) exited; end of its console, {}:\n{}",
                env.qemu_pid,
                self.console().display(),
                tail(&self.console(), 20)
            )),
        }
    }

    /// The guest's serial console log.
    pub fn console(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The guest's console output so far, for a failure message.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console(), lines)
    }
}

impl Drop for Machine<'_> {
    fn drop(&mut self) {
        let dir = self.run_dir.as_os_str();
        let _ = self.tooling.run(
            "stop",
            &[
                "--run-dir".as_ref(),
                dir,
                "--timeout".as_ref(),
                "10".as_ref(),
            ],
        );
        if let Some(pg) = self.group {
            // Whatever the script's stop left of the group it started.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pg),
                nix::sys::signal::Signal::SIGKILL,
            );
            procs::unregister_group(pg);
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_values_lose_their_quotes() {
        let env = parse_env("MICROVM_HVSOCK=/tmp/r/hvsock\nMICROVM_ACCEL='tcg'\nX=\"a=b\"\n\n");
        assert_eq!(env["MICROVM_HVSOCK"], "/tmp/r/hvsock");
        assert_eq!(env["MICROVM_ACCEL"], "tcg");
        assert_eq!(env["X"], "a=b");
    }
}
