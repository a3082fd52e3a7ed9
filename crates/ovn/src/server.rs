//! A real OVN Northbound `ovsdb-server` in a temporary directory, for tests and benchmarks.
//!
//! The server runs in the foreground as our child (so we own its pid), listens on a unix socket in
//! the directory and on an ephemeral TCP port of 127.0.0.1 (read back from its log), and is killed
//! when the value is dropped, also during a panic. It dies with us if we are killed
//! (`PR_SET_PDEATHSIG`). Needs Debian's `ovn-central`/`ovn-common` (schema, ovn-nbctl) and
//! `openvswitch-switch`/`openvswitch-common` (ovsdb-server, ovsdb-tool).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The packaged Northbound schema.
pub const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

pub struct NbServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    tcp_port: u16,
}

fn missing_tools() -> Option<String> {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("ovsdb-server", "openvswitch-switch"),
        ("ovsdb-tool", "openvswitch-common"),
        ("ovn-nbctl", "ovn-central"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file()
            || Path::new("/usr/bin").join(tool).is_file();
        if !found {
            missing.push(format!("{tool} ({package})"));
        }
    }
    if !Path::new(NB_SCHEMA).is_file() {
        missing.push(format!("{NB_SCHEMA} (ovn-common)"));
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

impl NbServer {
    /// Creates an empty Northbound database and starts a server on it.
    pub fn start() -> io::Result<NbServer> {
        if let Some(missing) = missing_tools() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "missing {missing}: apt-get install ovn-central ovn-host openvswitch-switch ovn-common (scripts/test does)"
                ),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("kube-egress-nb")
            .tempdir()?;
        let db = dir.path().join("nb.db");
        let out = Command::new(tool("ovsdb-tool"))
            .arg("create")
            .arg(&db)
            .arg(NB_SCHEMA)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ovsdb-tool create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut server = NbServer {
            dir,
            child: None,
            tcp_port: 0,
        };
        server.run()?;
        Ok(server)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nb.log")
    }

    fn run(&mut self) -> io::Result<()> {
        let dir = self.dir.path();
        let log = self.log_path();
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new(tool("ovsdb-server"));
        command
            .arg(dir.join("nb.db"))
            .arg(format!("--remote=punix:{}", dir.join("nb.sock").display()))
            .arg("--remote=ptcp:0:127.0.0.1")
            .arg(format!("--unixctl={}", dir.join("nb.ctl").display()))
            .arg(format!("--log-file={}", log.display()))
            .arg("--no-chdir")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child with us.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text.lines().find_map(|l| {
                l.split_once("listening on port ")
                    .and_then(|(_, p)| p.trim().parse::<u16>().ok())
            });
            // The socket file appears at bind(), before listen(): only a connection proves it ready.
            let listening = std::os::unix::net::UnixStream::connect(dir.join("nb.sock")).is_ok();
            if let (Some(port), true) = (port, listening) {
                self.tcp_port = port;
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(io::Error::other(format!(
                    "ovsdb-server exited ({status}): {text}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "ovsdb-server did not start in 10 s: {text}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `tcp:127.0.0.1:PORT` (the port changes at every restart).
    pub fn tcp(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.tcp_port)
    }

    /// `unix:PATH` (stable across restarts).
    pub fn unix(&self) -> String {
        format!("unix:{}", self.dir.path().join("nb.sock").display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server; the database file stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("nb.sock"));
    }

    /// Starts the server again on the same database and unix socket.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.run()
    }

    /// Runs `ovn-nbctl --db=unix:… ARGS`; its standard output, or an error with its standard error.
    pub fn nbctl(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new(tool("ovn-nbctl"))
            .arg(format!("--db={}", self.unix()))
            .arg("--no-leader-only")
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ovn-nbctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NbServer {
    fn drop(&mut self) {
        self.stop();
    }
}
