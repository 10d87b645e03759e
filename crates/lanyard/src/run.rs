//! `lanyard run`: a command in a fresh network namespace, attached to networks, with
//! no container engine. The child unshares its network namespace and waits; the
//! parent attaches `/proc/CHILD/ns/net`, lets the child exec the command, forwards
//! signals, and on exit detaches. The namespace dies with the child, taking its
//! links with it. `--network host` runs in this namespace, `none` with loopback only,
//! `container:NAME` in the namespace of an existing endpoint.
//!
//! In a fresh namespace the command also gets a mount namespace of its own, with
//! lanyard's resolv.conf and /etc/hosts bind-mounted over the host's
//! ([`crate::run_dns`]), and a UTS namespace with its host name (`--hostname`, else
//! `--name`, else the endpoint's short id).

use crate::cli::{EndpointOpts, RunArgs};
use crate::Lanyard;
use lanyard_core::model::DetachRequest;
use lanyard_core::{Error, Result};
use lanyard_kernel::handoff::Change;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

/// The child to forward signals to (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn os_err(what: &str) -> Error {
    Error::Other(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Uid, gid and supplementary gid for `--user NAME|UID[:GID]`.
fn resolve_user(spec: &str) -> Result<(u32, u32)> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, pw_gid) = if let Ok(uid) = u.parse::<u32>() {
        (uid, uid)
    } else {
        let name = CString::new(u).map_err(|_| Error::invalid("--user", spec, "contains NUL"))?;
        // SAFETY: getpwnam returns a pointer into static storage or NULL; we copy out at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(Error::invalid("--user", spec, "no such user"));
        }
        // SAFETY: pw is non-null and points to a valid passwd.
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    };
    let gid = match g {
        Some(g) => g
            .parse::<u32>()
            .map_err(|_| Error::invalid("--user", spec, "GID must be a number"))?,
        None => pw_gid,
    };
    Ok((uid, gid))
}

/// Where the command runs.
enum Mode {
    Host,
    Fresh(Vec<String>),
    Join(PathBuf),
}

/// Runs the command; returns its exit status (128+N when killed by signal N).
pub fn run(engine: &mut Lanyard, args: &RunArgs, run_dir: &std::path::Path) -> Result<i32> {
    let names = crate::run_dns::NameOpts::parse(args)?;
    let mode = match args.networks.first().map(String::as_str) {
        Some("host") if args.networks.len() == 1 => Mode::Host,
        Some("none") if args.networks.len() == 1 => Mode::Fresh(vec![]),
        Some(c) if c.starts_with("container:") => {
            if args.networks.len() > 1 {
                return Err(Error::invalid(
                    "--network",
                    c,
                    "container:NAME cannot be combined with other networks",
                ));
            }
            let ep = engine.endpoint(&c["container:".len()..])?;
            Mode::Join(ep.netns)
        }
        _ => {
            if let Some(s) = args
                .networks
                .iter()
                .find(|n| ["host", "none"].contains(&n.as_str()) || n.starts_with("container:"))
            {
                return Err(Error::invalid(
                    "--network",
                    s,
                    "host, none and container:NAME stand alone",
                ));
            }
            Mode::Fresh(args.networks.clone())
        }
    };
    let user = args.user.as_deref().map(resolve_user).transpose()?;
    let held = rustix::thread::capabilities(None)
        .map_err(|e| Error::Other(format!("reading this process's capabilities: {e}")))?
        .permitted;
    let caps = crate::caps::compute_within(held, args.privileged, &args.cap_add, &args.cap_drop)?;
    let ambient = match user {
        Some((uid, _)) if uid != 0 => crate::caps::ambient(caps, &args.cap_add),
        _ => rustix::thread::CapabilitySet::empty(),
    };
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| Error::invalid("CMD", a, "contains NUL")))
        .collect::<Result<_>>()?;
    let join = match &mode {
        Mode::Join(p) => Some(std::fs::File::open(p).map_err(|e| {
            Error::invalid(
                "--network",
                p.display(),
                format!("cannot open the namespace: {e}"),
            )
        })?),
        _ => None,
    };
    let fresh = matches!(mode, Mode::Fresh(_));
    if !fresh && names.any() {
        return Err(Error::invalid(
            "--network",
            &args.networks[0],
            "--dns, --dns-search, --hostname and --add-host need a namespace of the command's own (a network name or none)",
        ));
    }
    // resolv.conf only with a network to reach a server on.
    let with_resolv = matches!(&mode, Mode::Fresh(n) if !n.is_empty());
    let mut files = fresh
        .then(|| crate::run_dns::Files::prepare(run_dir, with_resolv))
        .transpose()?;
    let mounts: &[(CString, CString)] = files.as_ref().map_or(&[], |f| &f.mounts);
    let mounts: Vec<(CString, CString)> = mounts.to_vec();

    // Two pipes: child → parent "namespace ready", parent → child "go" (1) / "abort" (0).
    let mut ready = [0; 2];
    let mut go = [0; 2];
    // SAFETY: plain pipe2 calls on local arrays.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0
        || unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0
    {
        return Err(os_err("pipe"));
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let join_fd = join.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);

    // SAFETY: this process is single-threaded here; the child only makes
    // async-signal-safe calls (unshare, setns, read, write, set*id, prctl, capset,
    // signal, execvp, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: child side, see above.
        unsafe {
            child(
                fresh,
                join_fd,
                (ready[1], go[0]),
                &mounts,
                user,
                (caps, ambient),
                &ptrs,
            )
        }
    }
    CHILD.store(pid, Ordering::SeqCst);
    // SAFETY: closing our copies of the child's pipe ends.
    unsafe {
        libc::close(ready[1]);
        libc::close(go[0]);
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let n = unsafe { libc::read(ready[0], b.as_mut_ptr().cast(), 1) };
    let mut attached = vec![];
    let setup = if n != 1 || b[0] != 1 {
        Err(Error::Other(
            "the child could not create its network namespace (are you root?)".into(),
        ))
    } else if let Mode::Fresh(nets) = &mode {
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let mut r = engine.loopback_up(&netns);
        for (i, net) in nets.iter().enumerate() {
            if r.is_err() {
                break;
            }
            // Addresses, MAC, name and ports are the first network's; the port
            // sysctl is the namespace's.
            let opts = if i == 0 {
                args.opts.clone()
            } else {
                EndpointOpts {
                    unprivileged_port_start: args.opts.unprivileged_port_start,
                    ..Default::default()
                }
            };
            let req = opts.request(net, netns.clone(), None);
            r = engine.attach(&req).map(|ep| attached.push(ep.id));
        }
        if nets.is_empty() {
            if let Some(p) = args.opts.unprivileged_port_start {
                r = r.and_then(|_| {
                    engine.kernel_sysctl(
                        &netns,
                        "net.ipv4.ip_unprivileged_port_start",
                        &p.to_string(),
                    )
                });
            }
        }
        r
    } else {
        Ok(())
    };
    // The name files, once the endpoints exist; the host name goes to the child
    // after the verdict byte.
    let mut hostname = vec![];
    let setup = setup.and_then(|()| {
        let Some(f) = files.as_mut() else {
            return Ok(());
        };
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let eps = attached
            .iter()
            .map(|id| engine.endpoint(id))
            .collect::<Result<Vec<_>>>()?;
        for ep in &eps {
            tell(run_dir, Change::Added, ep);
        }
        hostname = f
            .write(run_dir, &names, &netns, &eps)?
            .unwrap_or_default()
            .into_bytes();
        if with_resolv {
            crate::run_dns::await_responder(run_dir, &netns);
        }
        Ok(())
    });
    // Verdict, the host name's length (at most 64), the host name.
    let mut verdict = vec![setup.is_ok() as u8, hostname.len() as u8];
    verdict.extend_from_slice(&hostname);
    // SAFETY: signal handlers that only call kill; writing one byte to our pipe.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
        libc::write(go[1], verdict.as_ptr().cast(), verdict.len());
        libc::close(go[1]);
        libc::close(ready[0]);
    }
    let status = wait(pid);
    CHILD.store(0, Ordering::SeqCst);
    let mut cleanup_err = None;
    for id in attached {
        match engine.detach(&DetachRequest::Endpoint(id)) {
            Ok(Some(ep)) => tell(run_dir, Change::Removed, &ep),
            Ok(None) => {}
            Err(e) => {
                cleanup_err.get_or_insert(e);
            }
        }
    }
    drop(files);
    setup?;
    if let Some(e) = cleanup_err {
        eprintln!("lanyard: {e}");
    }
    status
}

/// Tells a running daemon that `ep` came or went (its DNS responder follows).
fn tell(run_dir: &std::path::Path, change: Change, ep: &lanyard_core::model::Endpoint) {
    let path = run_dir.join(lanyard_kernel::handoff::SOCKET);
    let _ = lanyard_kernel::handoff::notify(&path, change, ep.network.as_str(), &ep.id);
}

fn wait(pid: libc::pid_t) -> Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("waitpid"));
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    })
}

/// The child between fork and exec.
///
/// # Safety
/// Call only in a freshly forked child of a single-threaded process.
unsafe fn child(
    fresh: bool,
    join: Option<i32>,
    (ready, go): (i32, i32),
    mounts: &[(CString, CString)],
    user: Option<(u32, u32)>,
    (caps, ambient): (rustix::thread::CapabilitySet, rustix::thread::CapabilitySet),
    argv: &[*const libc::c_char],
) -> ! {
    // SAFETY: the caller guarantees we are a fresh child; all calls are async-signal-safe.
    unsafe {
        let mut ok = 1u8;
        if fresh && libc::unshare(libc::CLONE_NEWNET) != 0 {
            ok = 0;
        }
        if let Some(fd) = join {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                ok = 0;
            }
        }
        libc::write(ready, (&ok as *const u8).cast(), 1);
        // The verdict byte, the host name's length, the host name (none: keep ours).
        let mut b = [0u8; 2 + 64];
        let mut n = 0usize;
        while n < 2 || n < 2 + usize::from(b[1]).min(64) {
            let r = libc::read(go, b.as_mut_ptr().add(n).cast(), b.len() - n);
            if r <= 0 {
                break;
            }
            n += r as usize;
        }
        if ok == 0 || n < 2 || b[0] != 1 {
            libc::_exit(125);
        }
        if n > 2
            && (libc::unshare(libc::CLONE_NEWUTS) != 0
                || libc::sethostname(b.as_ptr().add(2).cast(), n - 2) != 0)
        {
            let msg = b"lanyard run: cannot set the host name\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(125);
        }
        if !mounts.is_empty() {
            let private = libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0;
            let bound = private
                && mounts.iter().all(|(src, dst)| {
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) == 0
                });
            if !bound {
                let msg = b"lanyard run: cannot bind-mount /etc/resolv.conf and /etc/hosts\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(125);
            }
        }
        let non_root = user.is_some_and(|(uid, _)| uid != 0);
        if crate::caps::before_user_switch(caps, non_root).is_err() {
            let msg = b"lanyard run: cannot limit the capability bounding set\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(125);
        }
        if let Some((uid, gid)) = user {
            let groups = [gid];
            if libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                let msg = b"lanyard run: cannot switch user\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(125);
            }
        }
        if crate::caps::apply(caps, ambient).is_err() {
            let msg = b"lanyard run: cannot set the command's capabilities\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(125);
        }
        // lanyard ignores SIGPIPE; an ignored signal survives exec, a handler does not.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execvp(argv[0], argv.as_ptr());
        let msg = b"lanyard run: cannot execute the command\n";
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}
