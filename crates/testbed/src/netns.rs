//! Network namespaces: creating and deleting them, running code and commands inside them,
//! finding the processes that live in them, and sweeping namespaces left by dead processes.
//!
//! Nothing here changes the network namespace of the calling process or of any other thread than
//! a short-lived helper thread: code that must run "inside" a namespace runs on a fresh thread
//! that `setns(2)`s into it, and commands are started from such a thread (a child inherits the
//! namespaces of the thread that forks it). `ip` itself is run with `-n NS`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// `ip netns add` sets up the shared `/run/netns` mount on first use; two concurrent first uses in
/// one process could stack two mounts. Creation and deletion therefore go one at a time.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn netns_lock() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The path of a named namespace.
pub fn netns_path(ns: &str) -> String {
    format!("{NETNS_DIR}/{ns}")
}

/// Whether this process runs as root (the testbed needs it; tests skip otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a new thread that has entered the network namespace `ns`, and returns its result.
/// The calling thread's namespace is never changed. A panic in `f` is propagated.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = netns_path(ns);
    let file =
        File::open(&path).map_err(|e| Error::io(format!("open network namespace {path}"), e))?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(scope, move || {
                // SAFETY: `file` is an open nsfs file descriptor that outlives the call;
                // setns(CLONE_NEWNET) only changes the network namespace of this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::io(
                        format!("setns into network namespace {ns}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                drop(file);
                Ok(f())
            })
            .map_err(|e| Error::io(format!("spawn a thread for namespace {ns}"), e))?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Shell-like rendering of a command line, for error messages.
pub(crate) fn render(argv: &[&str]) -> String {
    argv.iter()
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

fn status_text(output: &Output) -> String {
    output.status.to_string()
}

/// Runs a prepared command to completion, feeding `stdin` if given, and turns a failure to start
/// or a non-zero exit into an [`Error`] that names `shown` (the command as a user would type it).
pub(crate) fn run_checked(cmd: &mut Command, shown: &str, stdin: Option<&str>) -> Result<Output> {
    let output = run_unchecked(cmd, shown, stdin)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            command: shown.to_string(),
            status: status_text(&output),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            input: stdin.map(str::to_string),
        })
    }
}

fn run_unchecked(cmd: &mut Command, shown: &str, stdin: Option<&str>) -> Result<Output> {
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
        // A command that exits early closes its stdin; its exit status tells the story then.
        let _ = pipe.write_all(text.as_bytes());
    }
    child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for `{shown}`"), e))
}

/// Runs `argv` inside namespace `ns` and returns its standard output; a non-zero exit is an
/// error naming the command (`ip netns exec NS ...`) and quoting its standard error.
pub fn exec(ns: &str, argv: &[&str]) -> Result<String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Topology("exec needs a program".into()))?;
    let shown = format!("ip netns exec {ns} {}", render(argv));
    let output = in_netns(ns, || {
        run_checked(Command::new(program).args(args), &shown, None)
    })??;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`exec`] with the given standard input.
pub fn exec_with_input(ns: &str, argv: &[&str], stdin: &str) -> Result<String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Topology("exec needs a program".into()))?;
    let shown = format!("ip netns exec {ns} {}", render(argv));
    let output = in_netns(ns, || {
        run_checked(Command::new(program).args(args), &shown, Some(stdin))
    })??;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a prepared command inside `ns` and returns its output whatever its exit status
/// (standard input is empty; stdout and stderr are captured).
pub fn output(ns: &str, cmd: &mut Command) -> Result<Output> {
    let shown = format!("ip netns exec {ns} {:?}", cmd);
    in_netns(ns, || run_unchecked(cmd, &shown, None))?
}

/// Starts a prepared command inside `ns` and returns the child (which the caller owns: see
/// [`crate::Testbed::spawn`] for one that is stopped with the testbed).
pub fn spawn(ns: &str, cmd: &mut Command) -> Result<Child> {
    let shown = format!("ip netns exec {ns} {:?}", cmd);
    in_netns(ns, || {
        cmd.spawn()
            .map_err(|e| Error::io(format!("start `{shown}`"), e))
    })?
}

/// Runs `ip [-n NS] -batch -` with the given lines; the error names the failing line.
pub(crate) fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    let shown = match ns {
        Some(ns) => {
            cmd.args(["-n", ns]);
            format!("ip -n {ns} -batch -")
        }
        None => "ip -batch -".to_string(),
    };
    cmd.args(["-batch", "-"]);
    let mut input = lines.join("\n");
    input.push('\n');
    match run_checked(&mut cmd, &shown, Some(&input)) {
        Ok(_) => Ok(()),
        Err(Error::Command {
            command,
            status,
            stderr,
            ..
        }) => {
            // iproute2 reports "Command failed -:N" for the first failing line.
            let failing = stderr
                .lines()
                .find_map(|l| l.strip_prefix("Command failed -:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .and_then(|n| lines.get(n.wrapping_sub(1)));
            let input = match failing {
                Some(line) => Some(match ns {
                    Some(ns) => format!("ip -n {ns} {line}"),
                    None => format!("ip {line}"),
                }),
                None => Some(input),
            };
            Err(Error::Command {
                command,
                status,
                stderr,
                input,
            })
        }
        Err(other) => Err(other),
    }
}

/// Names of all named network namespaces (`ip netns list`), sorted.
pub fn list_namespaces() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("list {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether a named namespace exists.
pub fn namespace_exists(ns: &str) -> bool {
    fs::symlink_metadata(netns_path(ns)).is_ok()
}

/// Creates named namespaces, all or none: on failure the ones created are deleted again.
pub(crate) fn create_namespaces(names: &[String]) -> Result<()> {
    let _guard = netns_lock();
    for (i, name) in names.iter().enumerate() {
        let shown = format!("ip netns add {name}");
        if let Err(e) = run_checked(
            Command::new("ip").args(["netns", "add", name]),
            &shown,
            None,
        ) {
            let _ = delete_locked(&names[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// The namespace identity (device, inode) of a named namespace, if it exists.
fn ns_identity(ns: &str) -> Option<(u64, u64)> {
    fs::metadata(netns_path(ns))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Processes (other than this one) whose network namespace is one of `names`, with that name.
pub fn processes_in(names: &[String]) -> Vec<(u32, String)> {
    let wanted: HashMap<(u64, u64), &String> = names
        .iter()
        .filter_map(|n| ns_identity(n).map(|id| (id, n)))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net"))
            && let Some(name) = wanted.get(&(meta.dev(), meta.ino()))
        {
            found.push((pid, (*name).clone()));
        }
    }
    found
}

fn pid_alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Sends SIGKILL to every process living in one of `names` and waits (briefly) until they are
/// gone or zombies.
fn kill_processes_in(names: &[String]) {
    let victims = processes_in(names);
    for (pid, _) in &victims {
        // SAFETY: plain kill(2) on a pid read from /proc; a pid that vanished meanwhile only
        // yields ESRCH.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for (pid, _) in &victims {
        while pid_alive(*pid) && !is_zombie(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn delete_locked(names: &[String]) -> Result<()> {
    kill_processes_in(names);
    let mut failures = Vec::new();
    for name in names {
        if !namespace_exists(name) {
            continue;
        }
        let shown = format!("ip netns delete {name}");
        if let Err(e) = run_checked(
            Command::new("ip").args(["netns", "delete", name]),
            &shown,
            None,
        ) && namespace_exists(name)
        {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Topology(format!(
            "could not delete every namespace: {}",
            failures.join("; ")
        )))
    }
}

/// Kills the processes living in the given namespaces and deletes the namespaces (the ones that
/// do not exist are skipped). Deleting a namespace removes every link and address in it.
pub fn delete_namespaces(names: &[String]) -> Result<()> {
    let _guard = netns_lock();
    delete_locked(names)
}

/// Deletes every namespace whose name starts with `prefix` (and the processes in them); returns
/// the names deleted. This is how a kept testbed (see [`crate::TestbedBuilder::persistent_prefix`])
/// is taken down later.
pub fn remove_namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    if prefix.is_empty() {
        return Err(Error::Topology(
            "refusing to remove namespaces with an empty prefix".into(),
        ));
    }
    let names: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    delete_namespaces(&names)?;
    Ok(names)
}

/// Numbers the testbeds of this process (the `<n>` in `ke<pid>-<n>-<role>`).
static TESTBED_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Reserves the next testbed number of this process.
pub(crate) fn next_testbed_number() -> u32 {
    TESTBED_COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// The pid and testbed number in a testbed namespace name `ke<pid>-<n>-<role>`, if `name` has
/// that shape.
pub(crate) fn owner_of(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("ke")?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, tail) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) || tail.is_empty() {
        return None;
    }
    Some((pid.parse().ok()?, counter.parse().ok()?))
}

/// Deletes the namespaces named `ke<pid>-<n>-...` whose process `<pid>` is no longer alive
/// (left behind by a test process that was killed), and those carrying this process's pid with
/// a number it never handed out (left by an earlier process that had the same pid). Returns the
/// names deleted.
pub fn sweep_stale() -> Result<Vec<String>> {
    let me = std::process::id();
    let names = list_namespaces()?;
    // Read after listing: every testbed of ours that was listed had its number reserved before.
    let next = TESTBED_COUNTER.load(Ordering::SeqCst);
    let stale: Vec<String> = names
        .into_iter()
        .filter(|n| match owner_of(n) {
            Some((pid, number)) if pid == me => number >= next,
            Some((pid, _)) => !pid_alive(pid),
            None => false,
        })
        .collect();
    delete_namespaces(&stale)?;
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_parses_only_testbed_names() {
        assert_eq!(owner_of("ke123-0-node1"), Some((123, 0)));
        assert_eq!(owner_of("ke9-17-pod-a"), Some((9, 17)));
        assert_eq!(owner_of("ke123-0-"), None);
        assert_eq!(owner_of("ke123-node1"), None);
        assert_eq!(owner_of("kelab-node1"), None);
        assert_eq!(owner_of("kex1-0-node1"), None);
        assert_eq!(owner_of("other"), None);
    }

    #[test]
    fn a_failing_batch_names_its_line_and_quotes_stderr() {
        if !is_root() {
            eprintln!("SKIPPED: needs root (creates a network namespace)");
            return;
        }
        let name = format!("ke{}-{}-unit", std::process::id(), next_testbed_number());
        create_namespaces(std::slice::from_ref(&name)).unwrap();
        let result = ip_batch(
            Some(&name),
            &["link set dev lo up".into(), "link set dev nosuch up".into()],
        );
        delete_namespaces(std::slice::from_ref(&name)).unwrap();
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(&format!("`ip -n {name} -batch -` failed")),
            "{err}"
        );
        assert!(
            err.contains(&format!("at `ip -n {name} link set dev nosuch up`")),
            "{err}"
        );
        assert!(err.contains("Cannot find device"), "{err}");
        assert!(!namespace_exists(&name));
    }

    #[test]
    fn render_quotes_what_a_shell_would_split() {
        assert_eq!(render(&["ip", "addr", "show"]), "ip addr show");
        assert_eq!(render(&["sh", "-c", "echo a b"]), "sh -c 'echo a b'");
        assert_eq!(render(&["x", "it's"]), r"x 'it'\''s'");
    }
}
