//! The reaper of a process that exits soon (a CLI call, [`Netlink::exits_soon`]): its
//! worker is forked once and never waited for. Its own test binary, since that worker
//! stays this process's zombie child until the process exits, which the other reaper
//! tests would count as a leak.

#[allow(dead_code)]
mod lab;

use lab::{in_fresh_netns, tombstones_left, veth};
use lanyard_core::kernel::{tombstone_name, Kernel};
use lanyard_core::op::Netns;
use lanyard_kernel::Netlink;
use std::time::{Duration, Instant};

#[test]
fn a_cli_callers_worker_deletes_every_tombstone_and_holds_no_pipe() {
    in_fresh_netns("shared reaper", || {
        let mut k = Netlink::new().unwrap();
        k.exits_soon();
        // Enough tombstones that the worker is busy for a long while (each delete
        // waits for RCU grace periods).
        const N: u32 = 20;
        let mut tombs = Vec::new();
        for i in 0..N {
            let t = tombstone_name(0x300 + i);
            k.apply(&veth(t.as_str(), &format!("lyq{i}"), Netns::Host))
                .expect("veth pair");
            tombs.push((Netns::Host, t));
        }
        // A pipe like a CNI runtime's stdout: EOF must come when we close our end.
        let mut fds = [0; 2];
        // SAFETY: valid out-array for two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        k.reap(tombs).unwrap();
        // The caller goes on using its memory while the worker runs: the worker
        // must not depend on it.
        let scribble: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
        drop(scribble);
        // SAFETY: our own fds; read into a valid buffer.
        unsafe { libc::close(fds[1]) };
        let mut b = [0u8; 1];
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        unsafe { libc::close(fds[0]) };
        assert_eq!(n, 0, "EOF");
        assert!(
            tombstones_left(&mut k) > 0,
            "EOF came only once all {N} tombstones were deleted: the worker holds the pipe"
        );
        let end = Instant::now() + Duration::from_secs(10);
        while tombstones_left(&mut k) > 0 {
            assert!(
                Instant::now() < end,
                "tombstones left: {}",
                tombstones_left(&mut k)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}
