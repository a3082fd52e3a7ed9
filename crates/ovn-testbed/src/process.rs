//! Commands and daemons: running the OVS/OVN tools, starting the daemons (in the calling
//! process's namespace or in a chassis namespace), waiting for them, stopping them, and the
//! names and sweep that make every cluster's resources recognisable as its own.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kube_egress_testbed as testbed;

use crate::error::{Error, Result};

/// Namespace names start with this, followed by `<pid>-<n>-` (unique per process and cluster).
pub const NETNS_PREFIX: &str = "ko";
/// Runtime directories are `<temp dir>/kube-egress-ovn-<pid>-<n>`.
pub const RUNDIR_PREFIX: &str = "kube-egress-ovn-";

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Reserves the next cluster number of this process.
pub(crate) fn next_cluster_number() -> u32 {
    CLUSTER_COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// The `<pid>` and `<n>` of `<prefix><pid>-<n>-<role>` (namespaces) or `<prefix><pid>-<n>`
/// (runtime directories).
pub(crate) fn owner_of(name: &str, prefix: &str, needs_role: bool) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, rest) = rest.split_once('-')?;
    let (number, role) = match rest.split_once('-') {
        Some((number, role)) => (number, Some(role)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(number) {
        return None;
    }
    match role {
        Some(role) if needs_role && !role.is_empty() => {}
        None if !needs_role => {}
        _ => return None,
    }
    Some((pid.parse().ok()?, number.parse().ok()?))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a resource of (`pid`, `number`) belongs to no living cluster: its process is gone,
/// or it carries this process's pid with a number never handed out (an earlier process that had
/// the same pid left it).
fn is_stale(pid: u32, number: u32, next: u32) -> bool {
    if pid == std::process::id() {
        number >= next
    } else {
        !pid_alive(pid)
    }
}

/// Removes what clusters of dead processes left behind: their namespaces (with every process
/// living in them: the chassis daemons, servers) and their runtime directories (after killing
/// the central daemons recorded in its pid files, when their command line names the directory).
/// Returns the names removed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let names = testbed::list_namespaces()?;
    // Read after listing: every cluster of ours that was listed had its number reserved before.
    let next = CLUSTER_COUNTER.load(Ordering::SeqCst);
    let stale_ns: Vec<String> = names
        .into_iter()
        .filter(|n| {
            owner_of(n, NETNS_PREFIX, true).is_some_and(|(pid, num)| is_stale(pid, num, next))
        })
        .collect();
    testbed::delete_namespaces(&stale_ns)?;
    let mut removed = stale_ns;
    let tmp = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&tmp) {
        let entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        let next = CLUSTER_COUNTER.load(Ordering::SeqCst);
        for entry in entries {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if owner_of(&name, RUNDIR_PREFIX, false)
                .is_some_and(|(pid, num)| is_stale(pid, num, next))
            {
                let dir = entry.path();
                kill_recorded_daemons(&dir);
                let _ = fs::remove_dir_all(&dir);
                removed.push(dir.display().to_string());
            }
        }
    }
    Ok(removed)
}

/// SIGKILLs every process named in a `*.pid` file under `dir` (one level of subdirectories)
/// whose command line mentions `dir`, so a recycled pid is never hit.
fn kill_recorded_daemons(dir: &Path) {
    let mut pidfiles = Vec::new();
    let mut collect = |d: &Path| {
        if let Ok(entries) = fs::read_dir(d) {
            for e in entries.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pid") {
                    pidfiles.push(p);
                }
            }
        }
    };
    collect(dir);
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.path().is_dir() {
                collect(&e.path());
            }
        }
    }
    let marker = dir.display().to_string();
    for file in pidfiles {
        let Some(pid) = fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            // SAFETY: kill(2) on a pid whose command line names our runtime directory.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// Shell-like rendering of a command line, for error messages.
pub(crate) fn render(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
            {
                arg.to_string()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` in the calling process's namespace and returns its standard output; a
/// failure names the command and quotes its standard error.
pub(crate) fn run(program: &str, args: &[String]) -> Result<String> {
    run_with(
        Command::new(program).args(args),
        &render(program, args),
        None,
    )
}

/// Like [`run`], with a larger stack limit so that a very long argument list fits: the kernel
/// allows a quarter of `RLIMIT_STACK` for arguments and environment, up to 6 MB.
pub(crate) fn run_long(program: &str, args: &[String]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let bytes: usize = args.iter().map(|a| a.len() + 1 + 8).sum();
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut current) };
    let wanted = ((bytes as u64 * 4 + (64 << 20)) as libc::rlim_t).min(current.rlim_max);
    let max = current.rlim_max;
    // SAFETY: setrlimit is async-signal-safe and only affects the child about to exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_STACK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let shown = format!("{program} ... ({} arguments)", args.len());
    run_with(&mut cmd, &shown, None)
}

/// Runs a prepared command with optional standard input; errors name `shown`.
pub(crate) fn run_with(cmd: &mut Command, shown: &str, stdin: Option<&str>) -> Result<String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("start `{shown}`"), e))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for `{shown}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Testbed(testbed::Error::Command {
            command: shown.to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            input: stdin.map(str::to_string),
        }))
    }
}

/// Runs `ip -n NS -batch -` with the given lines.
pub(crate) fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let mut input = lines.join("\n");
    input.push('\n');
    run_with(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        &format!("ip -n {ns} -batch -"),
        Some(&input),
    )?;
    Ok(())
}

/// Polls `ready` every few milliseconds until it says yes, it fails, or `timeout` passes.
pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if ready()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A daemon started in the foreground (no `--detach`), so the cluster owns and reaps it. Its
/// log file and its standard error (where a daemon complains before its log is open) are kept
/// for error messages.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub name: String,
    child: Child,
    log: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `program args` with environment `env`, in namespace `netns` when given. `log` is
    /// the file the daemon was told to log to (`--log-file=`).
    pub fn start(
        name: &str,
        netns: Option<&str>,
        program: &str,
        args: &[String],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> Result<Daemon> {
        let stderr = log.with_extension("stderr");
        let err_file = fs::File::create(&stderr)
            .map_err(|e| Error::io(format!("create {}", stderr.display()), e))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = match netns {
            Some(ns) => testbed::spawn(ns, &mut cmd)?,
            None => cmd
                .spawn()
                .map_err(|e| Error::io(format!("start `{}`", render(program, args)), e))?,
        };
        Ok(Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the daemon has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failed(format!("exited ({status})"))),
            Err(e) => Err(Error::io(format!("wait for {}", self.name), e)),
        }
    }

    /// A [`Error::Daemon`] for this daemon with the end of its log.
    pub fn failed(&self, reason: String) -> Error {
        Error::Daemon {
            daemon: self.name.clone(),
            reason,
            log: self.log_tail(),
        }
    }

    /// The last lines of the daemon's log and standard error.
    pub fn log_tail(&self) -> String {
        let tail = |p: &Path| {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let mut out = tail(&self.log);
        let err = tail(&self.stderr);
        if !err.trim().is_empty() {
            out.push_str("\n--- stderr ---\n");
            out.push_str(&err);
        }
        out
    }

    /// SIGTERM; `stop_all` waits and escalates.
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

/// Stops daemons in the given order: SIGTERM to all, up to 2 s of grace, then SIGKILL; every
/// one is reaped.
pub(crate) fn stop_all(daemons: &mut [Daemon]) {
    for d in daemons.iter_mut() {
        d.terminate();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for d in daemons.iter_mut() {
        while matches!(d.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if matches!(d.child.try_wait(), Ok(None)) {
            let _ = d.child.kill();
        }
        let _ = d.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_parsed_only_from_our_names() {
        assert_eq!(owner_of("ko12-3-node1", NETNS_PREFIX, true), Some((12, 3)));
        assert_eq!(owner_of("ko12-3-p-web", NETNS_PREFIX, true), Some((12, 3)));
        assert_eq!(owner_of("ko12-3", NETNS_PREFIX, true), None);
        assert_eq!(owner_of("ko12-3-", NETNS_PREFIX, true), None);
        assert_eq!(owner_of("ke12-3-node1", NETNS_PREFIX, true), None);
        assert_eq!(owner_of("kox-3-node1", NETNS_PREFIX, true), None);
        assert_eq!(
            owner_of("kube-egress-ovn-77-0", RUNDIR_PREFIX, false),
            Some((77, 0))
        );
        assert_eq!(
            owner_of("kube-egress-ovn-77-0-x", RUNDIR_PREFIX, false),
            None
        );
        assert_eq!(owner_of("kube-egress-ovn-77", RUNDIR_PREFIX, false), None);
    }

    #[test]
    fn failing_commands_quote_stderr() {
        let err = run("sh", &["-c".into(), "echo boom >&2; exit 3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sh -c 'echo boom >&2; exit 3'` failed"),
            "{err}"
        );
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn long_argument_lists_fit() {
        // About 4 MB of arguments and pointers: more than an 8 MB stack allows (2 MB), less
        // than the kernel's fixed ceiling (6 MB).
        let args: Vec<String> = (0..150_000).map(|i| format!("argument-{i:08}")).collect();
        let mut with_script = vec!["-c".to_string(), "echo $#".to_string(), "sh".to_string()];
        with_script.extend(args);
        let out = run_long("sh", &with_script).unwrap();
        assert_eq!(out.trim(), "150000");
    }
}
