//! nftables in process: `libnftables.so.1` (Debian package `libnftables1`, which the `nft`
//! program itself uses), loaded at run time so that a machine without it still works through
//! the `nft` program.
//!
//! Starting `nft` costs about 2–3 ms per change (process start, library load, netlink setup);
//! the same command through a long-lived context costs about 0.1 ms, which is what keeps a
//! one-pod change well under 10 ms with 10,000 pods programmed.
//!
//! A [`Session`] is one libnftables context. Its netlink socket is opened when the context is
//! created, in the network namespace of the creating thread, and stays there: commands may then
//! run from any thread and still act on that namespace. Commands are given exactly as to the
//! command line (`list table inet kube_egress`, or a JSON batch) with JSON output, so they
//! behave as `nft -j ...` does, errors included (the text `nft` would print on stderr).
//!
//! libnftables keeps some process-wide state (its symbol tables, the GMP allocator hooks) and
//! does not document contexts as safe to use concurrently, so every call into it, across all
//! sessions, is serialised by one lock. A call blocks its thread for as long as the kernel takes
//! to commit the batch.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

/// The library's file name.
pub const LIBRARY: &str = "libnftables.so.1";

/// `NFT_CTX_DEFAULT`: a context with its netlink socket.
const CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON`: JSON output, and JSON accepted as input (nftables 1.0).
const OUTPUT_JSON: c_uint = 1 << 4;

type Ctx = *mut c_void;

/// The library's entry points we call.
struct Library {
    ctx_new: unsafe extern "C" fn(u32) -> Ctx,
    ctx_free: unsafe extern "C" fn(Ctx),
    output_set_flags: unsafe extern "C" fn(Ctx, c_uint),
    buffer_output: unsafe extern "C" fn(Ctx) -> c_int,
    buffer_error: unsafe extern "C" fn(Ctx) -> c_int,
    run_cmd_from_buffer: unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
    get_output_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    get_error_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
}

/// Serialises every call into the library.
static CALLS: Mutex<()> = Mutex::new(());

fn library() -> Result<&'static Library, &'static str> {
    static LOADED: OnceLock<Result<Library, String>> = OnceLock::new();
    LOADED
        .get_or_init(load)
        .as_ref()
        .map_err(|why| why.as_str())
}

/// The last `dlerror()` text.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the C library.
    let text = unsafe { libc::dlerror() };
    if text.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

fn load() -> Result<Library, String> {
    let name = CString::new(LIBRARY).expect("no NUL in the library name");
    // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process
    // (never dlclose'd), so the function pointers below stay valid.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dl_error());
    }
    let symbol = |name: &str| -> Result<*mut c_void, String> {
        let c_name = CString::new(name).expect("no NUL in symbol names");
        // SAFETY: a valid handle from dlopen and a valid C string.
        let address = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        if address.is_null() {
            Err(format!("{LIBRARY} has no {name}: {}", dl_error()))
        } else {
            Ok(address)
        }
    };
    // SAFETY: each symbol is the libnftables function of that name, whose C prototype (see
    // libnftables(3)) is the one the field is declared with.
    unsafe {
        Ok(Library {
            ctx_new: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> Ctx>(symbol(
                "nft_ctx_new",
            )?),
            ctx_free: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx)>(symbol(
                "nft_ctx_free",
            )?),
            output_set_flags: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx, c_uint)>(
                symbol("nft_ctx_output_set_flags")?,
            ),
            buffer_output: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx) -> c_int>(
                symbol("nft_ctx_buffer_output")?,
            ),
            buffer_error: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Ctx) -> c_int>(
                symbol("nft_ctx_buffer_error")?,
            ),
            run_cmd_from_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
            >(symbol("nft_run_cmd_from_buffer")?),
            get_output_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx) -> *const c_char,
            >(symbol("nft_ctx_get_output_buffer")?),
            get_error_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(Ctx) -> *const c_char,
            >(symbol("nft_ctx_get_error_buffer")?),
        })
    }
}

/// One libnftables context, bound to the network namespace of the thread that opened it.
pub struct Session {
    library: &'static Library,
    ctx: Ctx,
}

// SAFETY: the context is only ever used under `CALLS`, one call at a time, and its netlink
// socket does not depend on the calling thread once created.
unsafe impl Send for Session {}
// SAFETY: as above; `&Session` gives no access to the context outside `CALLS`.
unsafe impl Sync for Session {}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("libnftables session")
    }
}

/// A command libnftables rejected or the kernel refused.
#[derive(Debug)]
pub struct Failed {
    /// What `nft` would have printed on stderr.
    pub message: String,
}

impl Session {
    /// A context in the calling thread's network namespace, or why there is none (the library
    /// is missing, or the context could not be created).
    pub fn open() -> Result<Session, String> {
        let library = library().map_err(str::to_string)?;
        let _calls = CALLS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: the library's documented constructor; NULL on failure.
        let ctx = unsafe { (library.ctx_new)(CTX_DEFAULT) };
        if ctx.is_null() {
            return Err("nft_ctx_new failed".to_string());
        }
        // SAFETY: a live context; these only set flags and switch output to memory buffers.
        let buffered = unsafe {
            (library.output_set_flags)(ctx, OUTPUT_JSON);
            (library.buffer_output)(ctx) == 0 && (library.buffer_error)(ctx) == 0
        };
        if !buffered {
            // SAFETY: a live context, freed once.
            unsafe { (library.ctx_free)(ctx) };
            return Err("libnftables could not buffer its output".to_string());
        }
        Ok(Session { library, ctx })
    }

    /// Runs one command (command-line syntax or a JSON batch) and returns its output.
    pub fn run(&self, command: &str) -> Result<String, Failed> {
        let command = CString::new(command).map_err(|_| Failed {
            message: "the command holds a NUL byte".to_string(),
        })?;
        let _calls = CALLS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: a live context and a NUL-terminated command. The buffers returned are owned by
        // the context and valid until its next call; both are copied before the lock is
        // released, and reading them resets them for the next command.
        let (status, output, error) = unsafe {
            let status = (self.library.run_cmd_from_buffer)(self.ctx, command.as_ptr());
            let output = text((self.library.get_output_buffer)(self.ctx));
            let error = text((self.library.get_error_buffer)(self.ctx));
            (status, output, error)
        };
        if status == 0 {
            Ok(output)
        } else if error.trim().is_empty() {
            Err(Failed {
                message: format!("failed with status {status}"),
            })
        } else {
            Err(Failed {
                message: error.trim().to_string(),
            })
        }
    }
}

/// A copy of a C string the library returned (`""` for NULL).
///
/// # Safety
/// `text` is NULL or points to a NUL-terminated string valid for the duration of the call.
unsafe fn text(text: *const c_char) -> String {
    if text.is_null() {
        String::new()
    } else {
        // SAFETY: per the function's contract.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _calls = CALLS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: the context is live and this is its only owner.
        unsafe { (self.library.ctx_free)(self.ctx) };
    }
}
