//! `lanyard daemon` as a service host: what it repairs that the CLI alone would leave
//! broken (set elements deleted by someone else).

use crate::harness::{addr_of, lab};
use std::time::Duration;

/// How long a repair may take to show.
const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn the_daemon_puts_back_an_anti_spoofing_element_deleted_by_hand() {
    let lab = lab!();
    lab.lanyard_ok(&["network", "create", "br", "--subnet", "203.0.113.0/24"]);
    let c1 = lab.netns("c1");
    let ep = lab.attach("br", &c1, &[]);
    let c1_addr = addr_of(&ep, false);
    let host = lab.host();
    assert!(host.ping_within(&c1_addr, SETTLE), "no ping before");
    let mut daemon = lab.lanyard_spawn(&["daemon", "--interval", "60", "--gc-interval", "0"]);
    assert!(
        daemon.wait_for_stdout("watching nftables", SETTLE),
        "daemon did not start: {}",
        daemon.stderr()
    );
    // The endpoint's (port . MAC . IPv4) element, as nft prints it.
    let listing = host.ok(&["nft", "list", "set", "bridge", "lanyard", "addr4"]);
    let element = listing
        .split("elements = {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .map(|e| e.trim().to_string())
        .unwrap_or_else(|| panic!("no element in {listing}"));
    assert!(element.contains(&c1_addr), "{element}");
    host.ok(&[
        "nft",
        "delete",
        "element",
        "bridge",
        "lanyard",
        "addr4",
        &format!("{{ {element} }}"),
    ]);
    assert!(
        host.ping_within(&c1_addr, SETTLE),
        "the endpoint's IPv4 traffic stayed dropped\ndaemon stdout:\n{}\nstderr:\n{}",
        daemon.stdout(),
        daemon.stderr()
    );
    let listing = host.ok(&["nft", "list", "set", "bridge", "lanyard", "addr4"]);
    assert!(listing.contains(&c1_addr), "{listing}");
    assert!(daemon.stdout().contains("element"), "{}", daemon.stdout());
}
