//! Running work inside a named network namespace (`/run/netns/NAME`, as `ip netns` creates).
//!
//! The work runs on a dedicated OS thread that enters the namespace with
//! `setns(fd, CLONE_NEWNET)` and drives a current-thread tokio runtime, so every socket, every
//! netlink connection and every spawned task of the work stays in the namespace. The calling
//! thread's namespace never changes.
//!
//! Inside the work:
//! - child processes (`std::process::Command`, `tokio::process::Command`, e.g. `nft`) inherit the
//!   namespace, since they are forked from that thread;
//! - `/proc/sys/net/...` opened from that thread is the namespace's (see
//!   [`crate::netlink::sysctl`]);
//! - do not hand namespace-sensitive work to other threads (`tokio::fs`, `spawn_blocking`,
//!   `std::thread::spawn`): they live in the process's original namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A failure to enter a namespace or to start the work there.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {name} ({path}): {source}", path = path(name).display())]
    Open {
        name: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
    #[error("starting a thread or runtime for network namespace {name}: {source}")]
    Start {
        name: String,
        source: std::io::Error,
    },
}

/// The path of the named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Enters the namespace on the current thread and builds a current-thread runtime there.
fn enter(name: &str, namespace: File) -> Result<tokio::runtime::Runtime, NetnsError> {
    // SAFETY: `namespace` is an open nsfs descriptor; setns(CLONE_NEWNET) changes only the
    // network namespace of the calling thread.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetnsError::Start {
            name: name.to_string(),
            source,
        })
}

fn open(name: &str) -> Result<File, NetnsError> {
    File::open(path(name)).map_err(|source| NetnsError::Open {
        name: name.to_string(),
        source,
    })
}

/// Runs `work` to completion inside the namespace `name` and returns its result, blocking the
/// calling thread meanwhile (do not call it from an async task; see [`run_in_async`]). `work` may
/// borrow from the caller. A panic in `work` is resumed on the calling thread.
pub fn run_in<F, Fut, T>(name: &str, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let namespace = open(name)?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("netns {name}"))
            .spawn_scoped(scope, move || {
                let runtime = enter(name, namespace)?;
                Ok(runtime.block_on(work()))
            })
            .map_err(|source| NetnsError::Start {
                name: name.to_string(),
                source,
            })?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Like [`run_in`], but awaits the result instead of blocking the caller, for use from async
/// code (the work still runs on its own thread in the namespace). Dropping the returned future
/// does not stop the work.
pub async fn run_in_async<F, Fut, T>(name: &str, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let namespace = open(name)?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let owned_name = name.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("netns {name}"))
        .spawn(move || {
            let result = enter(&owned_name, namespace).map(|runtime| runtime.block_on(work()));
            let _ = sender.send(result);
        })
        .map_err(|source| NetnsError::Start {
            name: name.to_string(),
            source,
        })?;
    match receiver.await {
        Ok(result) => result,
        // The sender is only dropped unsent if the work panicked; the thread has ended.
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the namespace thread ended without a result or a panic"),
        },
    }
}
