//! One `NETLINK_ROUTE` socket and the three exchanges lanyard needs on it: a request
//! answered by an ack, a request answered by one message, and a dump.
//!
//! Requests are built with `netlink-packet-route`'s typed messages; answers are read
//! as raw bytes (see [`crate::wire`]) so that a new kernel attribute can never make a
//! dump undecodable. The socket asks for extended acks (the kernel's error text),
//! capped acks (errors do not echo the request back) and strict dump checking (the
//! kernel filters dumps by the header's fields).

use crate::error::NlError;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;

/// Receive buffer. The kernel caps dump datagrams at 32 KiB plus a page. It is
/// never zeroed: `recv` fills the spare capacity, so only the pages an answer really
/// uses get touched (zeroing 64 KiB cost 16 page faults per socket, about 40 µs).
const RECV_BUF: usize = 64 * 1024;
/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// A dump that keeps being interrupted by concurrent changes is retried this often.
const DUMP_TRIES: usize = 5;

/// How the kernel is expected to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An `NLMSG_ERROR` with code 0.
    Ack,
    /// One message of data (or an error).
    Reply,
    /// Messages of data up to `NLMSG_DONE`.
    Dump,
}

/// A `NETLINK_ROUTE` socket bound to the namespace it was opened in.
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Link indexes by name, as last seen in this namespace ([`NlSocket::index`]).
    indexes: Vec<(String, u32)>,
}

impl std::fmt::Debug for NlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlSocket").field("seq", &self.seq).finish()
    }
}

impl NlSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let sock = Socket::new(NETLINK_ROUTE)?;
        // Best effort: older kernels lack some of these; answers stay correct without.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(NlSocket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            indexes: Vec::new(),
        })
    }

    /// The index last seen for link `name` here, if any. Only as fresh as the rules
    /// around it make it: every `RTM_GETLINK` answer is remembered ([`Self::remember`]),
    /// every view of the namespace starts afresh, and every op that creates, deletes,
    /// renames or moves a link forgets the namespaces it touched
    /// (`Netlink::apply`). A verb looks its links up once instead of once per op.
    pub(crate) fn index(&self, name: &str) -> Option<u32> {
        self.indexes
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, i)| i)
    }

    /// Remembers that link `name` has index `index` here (`None`: there is none).
    pub(crate) fn remember(&mut self, name: &str, index: Option<u32>) {
        self.indexes.retain(|(n, _)| n != name);
        if let Some(i) = index {
            self.indexes.push((name.to_string(), i));
        }
    }

    /// Forgets every remembered index.
    pub(crate) fn forget_indexes(&mut self) {
        self.indexes.clear();
    }

    /// Sends `msg` with `NLM_F_ACK | flags` and waits for the kernel's ack.
    pub(crate) fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        self.exchange(msg, NLM_F_ACK | flags, Expect::Ack, |_, _| {})
    }

    /// Sends a `GET` request and returns the payload of the one message answering it.
    pub(crate) fn get(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<u8>, NlError> {
        let mut out = None;
        self.exchange(msg, 0, Expect::Reply, |_, p| out = Some(p.to_vec()))?;
        out.ok_or_else(|| NlError::Decode("no answer to a get request".into()))
    }

    /// Dumps: sends `msg` with `NLM_F_DUMP` and returns every answering payload.
    /// Retries when the kernel flags the dump as interrupted by a concurrent change.
    pub(crate) fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<Vec<u8>>, NlError> {
        for _ in 0..DUMP_TRIES {
            let mut out = Vec::new();
            let mut interrupted = false;
            self.exchange(msg.clone(), NLM_F_DUMP, Expect::Dump, |flags, p| {
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                out.push(p.to_vec());
            })?;
            if !interrupted {
                return Ok(out);
            }
        }
        Err(NlError::Decode(format!(
            "dump interrupted {DUMP_TRIES} times by concurrent changes"
        )))
    }

    /// Serialises `msg` with a fresh sequence number.
    fn encode(&mut self, msg: RouteNetlinkMessage, flags: u16) -> (Vec<u8>, u32) {
        self.seq = self.seq.wrapping_add(1);
        (encode(msg, NLM_F_REQUEST | flags, self.seq), self.seq)
    }

    /// Sends one request and reads answers with its sequence number until `expect` is
    /// met, handing each data message (`nlmsg_flags`, payload) to `on_data`. Answers to
    /// earlier requests (other sequence numbers) are skipped.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        expect: Expect,
        mut on_data: impl FnMut(u16, &[u8]),
    ) -> Result<(), NlError> {
        let (bytes, seq) = self.encode(msg, flags);
        self.sock.send_to(&bytes, &SocketAddr::new(0, 0), 0)?;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let h = &self.buf[off..];
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let typ = u16::from_ne_bytes([h[4], h[5]]);
                let mflags = u16::from_ne_bytes([h[6], h[7]]);
                let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if len < NLMSG_HDRLEN || off + len > n {
                    return Err(NlError::Decode(format!("bad nlmsg_len {len}")));
                }
                let payload = &self.buf[off + NLMSG_HDRLEN..off + len];
                off += align4(len);
                if mseq != seq {
                    continue;
                }
                match typ {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => return parse_error(mflags, payload),
                    NLMSG_DONE => {
                        // A failed dump carries a negative errno in its DONE message.
                        if payload.len() >= 4 {
                            let code = i32::from_ne_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]);
                            if code < 0 {
                                return Err(NlError::Kernel {
                                    errno: -code,
                                    msg: None,
                                });
                            }
                        }
                        return Ok(());
                    }
                    _ => {
                        on_data(mflags, payload);
                        if expect == Expect::Reply {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Receives one datagram into the buffer (its length is then the datagram's);
    /// refuses truncated ones.
    fn recv(&mut self) -> Result<usize, NlError> {
        loop {
            // `recv` writes into the spare capacity and sets the length to what it wrote.
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > RECV_BUF => {
                    return Err(NlError::Decode(format!(
                        "netlink datagram of {n} bytes exceeds the {RECV_BUF}-byte buffer"
                    )))
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Serialises `msg` into one netlink message with header `flags` and sequence `seq`.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut bytes = vec![0; nl.buffer_len()];
    nl.serialize(&mut bytes);
    bytes
}

/// Rounds a netlink length up to 4 bytes.
pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses an `NLMSG_ERROR` payload: code 0 is an ack, anything else an error with the
/// extended ack's message when the kernel attached one.
fn parse_error(flags: u16, p: &[u8]) -> Result<(), NlError> {
    if p.len() < 4 {
        return Err(NlError::Decode("short NLMSG_ERROR".into()));
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    if code == 0 {
        return Ok(());
    }
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 && p.len() >= 4 + NLMSG_HDRLEN {
        // The request's header follows the code, and its payload too unless capped.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize
        };
        let start = 4 + align4(echoed);
        if start <= p.len() {
            for (kind, value) in crate::wire::attrs(&p[start..]) {
                if kind == NLMSGERR_ATTR_MSG {
                    msg = Some(crate::wire::string(value)).filter(|s| !s.is_empty());
                }
            }
        }
    }
    Err(NlError::Kernel {
        errno: code.unsigned_abs() as i32,
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_payload_with_extended_ack_gives_errno_and_text() {
        let mut p = Vec::new();
        p.extend_from_slice(&(-libc::EOPNOTSUPP).to_ne_bytes());
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let text = b"Unknown device type\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        match parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p) {
            Err(NlError::Kernel { errno, msg }) => {
                assert_eq!(errno, libc::EOPNOTSUPP);
                assert_eq!(msg.as_deref(), Some("Unknown device type"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zero_code_is_an_ack() {
        assert!(parse_error(0, &[0, 0, 0, 0]).is_ok());
    }
}
