//! The CNI plugin configuration as a runtime writes it to `lanyard`'s stdin (and,
//! after a NUL byte, `CNI_ARGS`): every step the front end takes before it opens the
//! store (`parse`, `refuse_unknown`, `network_name`, `source`, `wants`,
//! `prev_result`) must answer without a panic, and every refusal must be a spec error
//! (decode 6, invalid config 7, or invalid environment 4 for `CNI_ARGS`) naming the
//! field. A `prevResult` that reads must write back in every supported version.
#![no_main]

use lanyard_cni::conf::{self, Source};
use lanyard_cni::error::{to_cni, DECODE, INVALID_CONFIG, INVALID_ENV};
use lanyard_cni::result::SUPPORTED_VERSIONS;
use lanyard_core::Error;
use libfuzzer_sys::fuzz_target;

/// A refusal of the configuration: a named field, a spec code, a message.
fn check_refusal(e: &Error) {
    let Error::Invalid { field, .. } = e else {
        panic!("not an invalid-config error: {e:?}");
    };
    assert!(!field.is_empty(), "an error naming no field: {e:?}");
    let c = to_cni(e, "1.1.0");
    assert!(
        [DECODE, INVALID_CONFIG, INVALID_ENV].contains(&c.code),
        "code {} for {e:?}",
        c.code
    );
    assert!(!c.msg.is_empty() && !c.details.is_empty(), "{c:?}");
    serde_json::to_string(&c).expect("the error object serialises");
}

fuzz_target!(|data: &[u8]| {
    let (stdin, args) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(String::from_utf8_lossy(&data[i + 1..]))),
        None => (data, None),
    };
    let nc = match conf::parse(stdin) {
        Ok(nc) => nc,
        Err(e) => return check_refusal(&e),
    };
    if let Err(e) = nc.refuse_unknown() {
        check_refusal(&e);
    }
    if let Err(e) = nc.network_name() {
        check_refusal(&e);
    }
    match nc.source() {
        Ok(Source::Named(n)) => assert!(!n.is_empty(), "an empty network name was taken"),
        Ok(Source::Inline(req)) => assert!(!req.name.is_empty(), "an inline network with no name"),
        Err(e) => check_refusal(&e),
    }
    if let Err(e) = nc.wants(args.as_deref()) {
        check_refusal(&e);
    }
    match nc.prev_result() {
        Ok(Some(r)) => {
            for v in SUPPORTED_VERSIONS {
                serde_json::to_string(&r.clone().in_version(v)).expect("a result serialises");
            }
        }
        Ok(None) => {}
        Err(e) => check_refusal(&e),
    }
});
