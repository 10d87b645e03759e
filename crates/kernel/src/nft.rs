//! nftables in-process, through libnftables (the library behind the `nft` command; no
//! subprocess): [`Nft::run`] applies one script as one transaction and returns what nft
//! printed; [`Nft::list_table`] shows lanyard's own tables.
//!
//! An [`Nft`] acts in the network namespace of the thread that created it: libnftables
//! opens its netlink socket in `nft_ctx_new`. libnftables keeps process-wide state
//! (one-time init, an interface cache) without locking, so every call into it here is
//! serialized by one process-wide mutex; contexts may live in several threads.
//!
//! The library is loaded (`dlopen`, through libloading) when the first context is
//! made, not linked: it and the five libraries it pulls in (nftnl, mnl, xtables,
//! jansson, gmp) would cost every `lanyard` process about 0.3 ms of start-up, and most
//! runs (macvlan attach and detach, `endpoint ls`) never touch nftables. A host without it gets a clear error
//! from the first firewall step instead of no `lanyard` at all.

use lanyard_core::firewall::{FAMILIES, TABLE};
use lanyard_core::{Error, Result};
use std::ffi::{c_char, c_int, CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// `struct nft_ctx`, opaque.
#[repr(C)]
struct NftCtx {
    _opaque: [u8; 0],
}

/// `NFT_CTX_DEFAULT` from `<nftables/libnftables.h>`.
const NFT_CTX_DEFAULT: u32 = 0;

/// The shared object to load (Debian: package libnftables1).
const LIBNFTABLES_SO: &str = "libnftables.so.1";

/// The libnftables functions lanyard calls, resolved once.
struct Lib {
    ctx_new: unsafe extern "C" fn(flags: u32) -> *mut NftCtx,
    ctx_free: unsafe extern "C" fn(ctx: *mut NftCtx),
    buffer_output: unsafe extern "C" fn(ctx: *mut NftCtx) -> c_int,
    buffer_error: unsafe extern "C" fn(ctx: *mut NftCtx) -> c_int,
    get_output_buffer: unsafe extern "C" fn(ctx: *mut NftCtx) -> *const c_char,
    get_error_buffer: unsafe extern "C" fn(ctx: *mut NftCtx) -> *const c_char,
    run_cmd_from_filename: unsafe extern "C" fn(ctx: *mut NftCtx, filename: *const c_char) -> c_int,
    /// The loaded library, which the pointers above point into.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Lib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("libnftables")
    }
}

/// The function `name` in `lib`, as the pointer type `F`.
///
/// # Safety
/// `F` is the function pointer type matching the C declaration of `name`, and `lib`
/// is never unloaded while the pointer is used.
unsafe fn func<F: Copy>(lib: &libloading::Library, name: &[u8]) -> std::result::Result<F, String> {
    // SAFETY: per this function's contract.
    match unsafe { lib.get::<F>(name) } {
        Ok(f) => Ok(*f),
        Err(e) => Err(format!(
            "{} has no {}: {e}",
            LIBNFTABLES_SO,
            String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name))
        )),
    }
}

impl Lib {
    /// Loads libnftables and resolves every function, or says what is missing.
    fn load() -> std::result::Result<Lib, String> {
        // SAFETY: loading a system library by soname runs its constructors, which is
        // what linking it did too. It is kept loaded for good (`Lib` lives in a
        // static), so the function pointers below stay valid.
        let lib = unsafe { libloading::Library::new(LIBNFTABLES_SO) }.map_err(|e| {
            format!("cannot load {LIBNFTABLES_SO}: {e} (install the libnftables1 package)")
        })?;
        // SAFETY: each type is the declaration of that function in
        // <nftables/libnftables.h> (stable since nftables 0.9); `lib` is stored with
        // the pointers and never unloaded.
        unsafe {
            Ok(Lib {
                ctx_new: func(&lib, b"nft_ctx_new\0")?,
                ctx_free: func(&lib, b"nft_ctx_free\0")?,
                buffer_output: func(&lib, b"nft_ctx_buffer_output\0")?,
                buffer_error: func(&lib, b"nft_ctx_buffer_error\0")?,
                get_output_buffer: func(&lib, b"nft_ctx_get_output_buffer\0")?,
                get_error_buffer: func(&lib, b"nft_ctx_get_error_buffer\0")?,
                run_cmd_from_filename: func(&lib, b"nft_run_cmd_from_filename\0")?,
                _lib: lib,
            })
        }
    }
}

/// libnftables, loaded on first use; the error says why it could not be.
static LIB: OnceLock<std::result::Result<Lib, String>> = OnceLock::new();

/// The loaded library, or [`Error::Unsupported`] naming what is missing.
fn lib() -> Result<&'static Lib> {
    LIB.get_or_init(Lib::load)
        .as_ref()
        .map_err(|e| Error::Unsupported(format!("nftables: {e}")))
}

/// Serializes every call into libnftables (see the module docs).
static LIBNFTABLES: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    // A panic while holding the lock leaves no Rust state to repair.
    LIBNFTABLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// One libnftables context, bound to the network namespace it was created in.
#[derive(Debug)]
pub struct Nft {
    ctx: NonNull<NftCtx>,
    lib: &'static Lib,
}

// SAFETY: the context's netlink socket stays bound to its namespace whichever thread
// uses it, and every use goes through `LIBNFTABLES`, so moving it to another thread
// is sound. It is not `Sync`: `run` needs `&mut self`.
unsafe impl Send for Nft {}

/// Copies a libnftables buffer (NUL-terminated, owned by the context) into a String.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string valid until the next call on the
/// context it came from.
unsafe fn buffer_text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `script` in an anonymous memory file (memfd), for libnftables to read by path.
fn script_file(script: &str) -> Result<File> {
    let io_err = |e: std::io::Error| {
        Error::kernel("nft: memfd for the script", e.to_string(), e.raw_os_error())
    };
    if script.contains('\0') {
        return Err(Error::invalid(
            "nft script",
            op_name(script),
            "contains a NUL byte",
        ));
    }
    let fd = rustix::fs::memfd_create("lanyard-nft", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| io_err(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(script.as_bytes()).map_err(io_err)?;
    Ok(file)
}

/// Longest quoted script line kept whole in an error.
const QUOTE_MAX: usize = 160;

/// `line L:C1-C2: …` (columns 1-based, inclusive) → (L, first byte, end byte).
fn error_location(header: &str) -> Option<(usize, usize, usize)> {
    let (loc, _) = header.strip_prefix("line ")?.split_once(": ")?;
    let (line, cols) = loc.split_once(':')?;
    let (a, b) = cols.split_once('-').unwrap_or((cols, cols));
    let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
    Some((line.parse().ok()?, a.checked_sub(1)?, b.max(a)))
}

/// `text[first..end]` with up to a third of [`QUOTE_MAX`] around it, and a caret line.
fn quote_window(text: &str, first: usize, end: usize) -> [String; 2] {
    let first = first.min(text.len());
    let end = end.clamp(first, text.len());
    let keep = QUOTE_MAX / 3;
    let (mut from, mut to) = (
        first.saturating_sub(keep),
        (end.max(first + keep) + keep).min(text.len()),
    );
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    while !text.is_char_boundary(to) {
        to += 1;
    }
    let pre = if from > 0 { "…" } else { "" };
    let post = if to < text.len() { "…" } else { "" };
    let indent = text[from..first].chars().count() + pre.chars().count();
    let carets = text[first..end].chars().count().max(1);
    [
        format!("{pre}{}{post}", &text[from..to]),
        format!("{}{}", " ".repeat(indent), "^".repeat(carets)),
    ]
}

/// nft quotes the offending line under each located error, with a `^^^` line; a
/// `ruleset` line holds a whole set, so the quote can be megabytes (and nft cuts it
/// at 1023 bytes while its carets go on). Re-quotes a window of `script` around the
/// located columns instead, and cuts any other overlong line.
fn shorten_quotes(err: &str, script: &str) -> String {
    let lines: Vec<&str> = err.lines().collect();
    let is_marks = |l: &str| l.contains('^') && l.chars().all(|c| c == ' ' || c == '^');
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        out.push(lines[i].to_string());
        let quoted = lines.get(i + 2).is_some_and(|l| is_marks(l));
        let located = error_location(lines[i])
            .and_then(|(l, a, b)| Some((script.lines().nth(l.checked_sub(1)?)?, a, b)));
        if let (true, Some((text, first, end))) = (quoted, located) {
            if text.len() > QUOTE_MAX {
                out.extend(quote_window(text, first, end));
                i += 3;
                continue;
            }
        }
        if lines[i].len() > QUOTE_MAX && !is_marks(lines[i]) {
            let last = out.len() - 1;
            out[last] = quote_window(lines[i], 0, 0)[0].clone();
        } else if is_marks(lines[i]) && lines[i].len() > QUOTE_MAX {
            out.pop(); // carets under a quote that was cut: they point nowhere now
        }
        i += 1;
    }
    out.join("\n")
}

/// The first command of `script`, shortened, to name the operation in errors.
fn op_name(script: &str) -> String {
    let first = script
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let short: String = first.chars().take(60).collect();
    let more = if short.len() < first.len() || script.trim().lines().count() > 1 {
        " …"
    } else {
        ""
    };
    format!("nft {short}{more}")
}

impl Nft {
    /// A context in the calling thread's network namespace, with output and errors
    /// captured. libnftables exits the process if it cannot open a netlink socket at
    /// all (no nf_tables in the kernel); it returns no error for that.
    pub fn new() -> Result<Self> {
        let guard = lock();
        let lib = lib()?;
        // SAFETY: plain constructor; a null result is handled below.
        let raw = unsafe { (lib.ctx_new)(NFT_CTX_DEFAULT) };
        let ctx = NonNull::new(raw)
            .ok_or_else(|| Error::kernel("nft_ctx_new", "libnftables returned no context", None))?;
        // SAFETY: `ctx` is a live context that nothing else uses yet.
        let (out, err) = unsafe {
            (
                (lib.buffer_output)(ctx.as_ptr()),
                (lib.buffer_error)(ctx.as_ptr()),
            )
        };
        // Release the lock before `Nft` exists: its Drop takes the lock again.
        drop(guard);
        let nft = Nft { ctx, lib };
        if out != 0 || err != 0 {
            return Err(Error::kernel(
                "nft_ctx_buffer_output",
                "libnftables could not buffer its output",
                None,
            ));
        }
        Ok(nft)
    }

    /// Runs `script` (nft syntax, any number of commands) as one transaction: all of it
    /// applies or none of it. Returns what nft printed (listings); on failure,
    /// [`Error::Kernel`] carries nft's message, which points at the offending command
    /// (`line 4:26-36: Error: No such file or directory` and that line).
    ///
    /// nft 1.0.6 fails a script with several `list table` commands (its cache then
    /// holds one table only); list one table per call.
    pub fn run(&mut self, script: &str) -> Result<String> {
        // nft 1.0 quotes the wrong line in errors about a multi-line buffer, and the
        // right one for a file; so the script goes through an anonymous memory file.
        let file = script_file(script)?;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let cpath = CString::new(path.clone()).unwrap_or_default();
        let _g = lock();
        let ctx = self.ctx.as_ptr();
        // SAFETY: `ctx` is live and exclusively borrowed; `cpath` and `file` outlive
        // the call. Both buffers are read (which also rewinds them) and copied before
        // the lock is released and before any further call on `ctx`.
        let (rc, out, err) = unsafe {
            let rc = (self.lib.run_cmd_from_filename)(ctx, cpath.as_ptr());
            (
                rc,
                buffer_text((self.lib.get_output_buffer)(ctx)),
                buffer_text((self.lib.get_error_buffer)(ctx)),
            )
        };
        if rc != 0 {
            let err = shorten_quotes(
                &err.trim_end().replace(&format!("{path}:"), "line "),
                script,
            );
            let reason = if err.is_empty() {
                format!("failed with status {rc}")
            } else {
                err
            };
            return Err(Error::kernel(op_name(script), reason, None));
        }
        Ok(out)
    }

    /// lanyard's tables (`table inet lanyard`, `table bridge lanyard`) as nft lists
    /// them, or None when neither exists. Tables of other software are not read.
    pub fn list_table(&mut self) -> Result<Option<String>> {
        let tables = self.run("list tables")?;
        let mut out = String::new();
        for fam in FAMILIES {
            let line = format!("table {fam} {TABLE}");
            if tables.lines().any(|l| l.trim() == line) {
                out.push_str(&self.run(&format!("list table {fam} {TABLE}"))?);
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _g = lock();
        // SAFETY: `ctx` came from `nft_ctx_new` and is freed exactly once, here.
        unsafe { (self.lib.ctx_free)(self.ctx.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_quoted_line_is_requoted_around_the_error() {
        let elems = "tcp . 1 : 10.0.0.1 . 80, ".repeat(10_000);
        let script = format!("table inet lanyard\nadd element inet lanyard dnat4_any {{ {elems}tcp . 2 : 10.0.0.2 . 80 }}\n");
        let line = script.lines().nth(1).unwrap();
        let col = line.find("tcp . 2").unwrap();
        // What nft prints: the quote cut at 1023 bytes, carets at the real column.
        let err = format!(
            "line 2:{}-{}: Error: File exists\n{}\n{}^^^^^^^\nError: next",
            col + 1,
            col + 7,
            &line[..1023],
            " ".repeat(col)
        );
        let short = shorten_quotes(&err, &script);
        let lines: Vec<&str> = short.lines().collect();
        assert_eq!(lines.len(), 4, "{short}");
        assert!(
            lines[1].starts_with('…') && lines[1].chars().count() < 200,
            "{short}"
        );
        // The carets point at the offending element.
        let at = lines[2].find('^').unwrap();
        let pointed: String = lines[1].chars().skip(at).take(7).collect();
        assert_eq!(pointed, "tcp . 2", "{short}");
        assert_eq!(lines[2].trim_start(), "^^^^^^^");
        assert_eq!(lines[3], "Error: next");
    }

    #[test]
    fn short_errors_are_left_alone() {
        let small = "line 1:1-3: Error: x\nfoo bar\n^^^";
        assert_eq!(shorten_quotes(small, "foo bar\n"), small);
        assert_eq!(error_location("line 4:26-36: Error: y"), Some((4, 25, 36)));
        assert_eq!(error_location("line 4:26: Error: y"), Some((4, 25, 26)));
        assert_eq!(error_location("Error: y"), None);
    }

    #[test]
    fn errors_name_the_first_command() {
        assert_eq!(op_name("list tables"), "nft list tables");
        assert_eq!(
            op_name(
                "\n# c\nadd element inet lanyard x { 1 }\ndelete element inet lanyard x { 1 }\n"
            ),
            "nft add element inet lanyard x { 1 } …"
        );
    }
}
