//! What the DNS responder answers, built from the store's endpoints: pure (no
//! socket, no store), so every answer is unit-tested without root.
//!
//! A query comes in on the responder of one namespace (the *querier*, by identity).
//! It sees the names of the endpoints on the networks its own endpoints are on: each
//! endpoint's `--name` and `--alias` names, and a name given to any endpoint of a
//! namespace also covers that namespace's endpoints on other networks (`lanyard run
//! --name web --network a --network b` is `web` on both). A and AAAA for those names
//! are answered here (an empty answer when the name is known but has no address of
//! that family), PTR for their addresses; everything else goes to the querier's
//! upstream servers ([`Outcome::Forward`]). Messages are read and written by
//! hickory-proto.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use lanyard_core::model::{Endpoint, EndpointState};
use lanyard_core::owner::Owner;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A namespace on this host, by identity (`st_dev`, `st_ino` of its nsfs file).
pub type NsKey = (u64, u64);

/// Time to live of local answers: none, so a detach takes a name away at once even
/// from a caching stub in the namespace.
pub const TTL: u32 = 0;
/// Largest UDP answer for a query without EDNS (RFC 1035).
const PLAIN_UDP: usize = 512;
/// The UDP payload size the responder announces and sends at most (RFC 9715).
const EDNS_UDP: u16 = 1232;

/// One endpoint's names and addresses on one network.
#[derive(Debug)]
struct Entry {
    network_id: String,
    /// The name PTR answers give (its own or its namespace's `--name`, else an alias).
    primary: Option<String>,
    addrs: Vec<IpAddr>,
}

/// A namespace this host serves: where it is and what it may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Querier {
    /// A path to the namespace (an endpoint's recorded one).
    pub netns: PathBuf,
    /// The networks its endpoints are on.
    pub networks: Vec<String>,
    /// Where its other questions go.
    pub upstreams: Vec<SocketAddr>,
    /// Its networks' servers (`-o dns=`), while the table is built.
    net_upstreams: Vec<SocketAddr>,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this answer back.
    Reply(Vec<u8>),
    /// Send the query as it came to these servers, in order, and their answer back.
    Forward(Vec<SocketAddr>),
    /// Not a DNS message: nothing to answer.
    Drop,
}

/// Every name the responders answer, and every namespace they serve.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Entry>,
    /// Lowercase name (no trailing dot) → entries.
    names: HashMap<String, Vec<usize>>,
    queriers: HashMap<NsKey, Querier>,
    /// Where a query from an unknown namespace goes (the host's upstreams).
    fallback: Vec<SocketAddr>,
}

/// Whether `ep` lives on this host (`node`: this host's node name).
fn local(ep: &Endpoint, node: Option<&str>) -> bool {
    ep.node.is_none() || ep.node.as_deref() == node
}

impl Table {
    /// Builds the table from every endpoint in the store. `node` is this host's node
    /// name: endpoints of other nodes are answered for but not served. A namespace's
    /// upstreams: those `lanyard run --dns` gave it (`given`), else its networks'
    /// (`-o dns=`, `nets` by network id), else its DHCP leases', else the host's real
    /// ones (`host`). Only active endpoints count; Docker's have Docker's own resolver.
    pub fn build(
        eps: &[Endpoint],
        node: Option<&str>,
        host: &[IpAddr],
        given: &HashMap<NsKey, Vec<IpAddr>>,
        nets: &HashMap<String, Vec<IpAddr>>,
    ) -> Table {
        let on53 = |a: &IpAddr| SocketAddr::new(*a, 53);
        let live: Vec<&Endpoint> = eps
            .iter()
            .filter(|e| e.state == EndpointState::Active && e.in_netns())
            .collect();
        // A namespace's names: the `--name` of each of its endpoints.
        let mut ns_names: HashMap<(Option<&str>, NsKey), Vec<String>> = HashMap::new();
        for e in &live {
            if let Some(n) = &e.name {
                ns_names
                    .entry((e.node.as_deref(), e.netns_inode))
                    .or_default()
                    .push(n.as_str().to_ascii_lowercase());
            }
        }
        let mut t = Table {
            fallback: host.iter().map(on53).collect(),
            ..Table::default()
        };
        for e in &live {
            let mut names: Vec<String> = ns_names
                .get(&(e.node.as_deref(), e.netns_inode))
                .cloned()
                .unwrap_or_default();
            if let Some(own) = &e.name {
                // Its own name first: the one PTR gives.
                let own = own.as_str().to_ascii_lowercase();
                names.retain(|n| *n != own);
                names.insert(0, own);
            }
            names.extend(e.aliases.iter().map(|a| a.as_str().to_string()));
            names.dedup();
            let i = t.entries.len();
            for n in &names {
                t.names.entry(n.clone()).or_default().push(i);
            }
            t.entries.push(Entry {
                network_id: e.network_id.clone(),
                primary: names.first().cloned(),
                addrs: e.addresses.iter().map(|a| a.addr()).collect(),
            });
            let served = local(e, node) && !matches!(e.owner, Some(Owner::Docker { .. }));
            if served {
                let q = t.queriers.entry(e.netns_inode).or_insert_with(|| Querier {
                    netns: e.netns.clone(),
                    networks: vec![],
                    upstreams: vec![],
                    net_upstreams: vec![],
                });
                q.networks.push(e.network_id.clone());
                if let Some(n) = nets.get(&e.network_id) {
                    q.net_upstreams.extend(n.iter().map(on53));
                }
                if let Some(l) = &e.lease {
                    q.upstreams
                        .extend(l.dns.iter().map(|a| on53(&IpAddr::V4(*a))));
                }
            }
        }
        for (key, q) in t.queriers.iter_mut() {
            if let Some(g) = given.get(key).filter(|g| !g.is_empty()) {
                q.upstreams = g.iter().map(on53).collect();
            } else if !q.net_upstreams.is_empty() {
                q.upstreams = std::mem::take(&mut q.net_upstreams);
            }
            q.net_upstreams.clear();
            if q.upstreams.is_empty() {
                q.upstreams = t.fallback.clone();
            }
            let mut seen = HashSet::new();
            q.upstreams.retain(|u| seen.insert(*u));
        }
        t
    }

    /// The namespaces to serve.
    pub fn queriers(&self) -> &HashMap<NsKey, Querier> {
        &self.queriers
    }

    /// Answers `query` (the bytes of one DNS message) from namespace `ns`; `udp`:
    /// it came over UDP, so an answer too big for the asker's buffer is truncated
    /// (TC set: the asker retries over TCP).
    pub fn answer(&self, ns: NsKey, query: &[u8], udp: bool) -> Outcome {
        let req = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) if query.len() >= 12 => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return reply(&Message::error_msg(
                    id,
                    OpCode::Query,
                    ResponseCode::FormErr,
                ));
            }
            Err(_) => return Outcome::Drop,
        };
        if req.metadata.message_type != MessageType::Query {
            return Outcome::Drop;
        }
        let upstreams = self
            .queriers
            .get(&ns)
            .map_or(&self.fallback, |q| &q.upstreams);
        let forward = || {
            if upstreams.is_empty() {
                let mut m = respond(&req);
                m.metadata.response_code = ResponseCode::ServFail;
                reply(&m)
            } else {
                Outcome::Forward(upstreams.clone())
            }
        };
        if req.metadata.op_code != OpCode::Query || req.queries.len() != 1 {
            return forward();
        }
        let q = &req.queries[0];
        if q.query_class() != DNSClass::IN {
            return forward();
        }
        let networks: &[String] = self.queriers.get(&ns).map_or(&[], |q| &q.networks);
        let visible = |i: &usize| networks.contains(&self.entries[*i].network_id);
        let name = q.name().to_lowercase().to_ascii();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let found: Vec<&Entry> = self
            .names
            .get(name)
            .map(|ix| {
                ix.iter()
                    .filter(|i| visible(i))
                    .map(|i| &self.entries[*i])
                    .collect()
            })
            .unwrap_or_default();
        let mut answers = vec![];
        if !found.is_empty() {
            for a in found.iter().flat_map(|e| &e.addrs) {
                let data = match (q.query_type(), a) {
                    (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
                    (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                answers.push(Record::from_rdata(q.name().clone(), TTL, data));
            }
        } else if q.query_type() == RecordType::PTR {
            let Some(target) = self.ptr(q.name(), networks) else {
                return forward();
            };
            answers.push(Record::from_rdata(
                q.name().clone(),
                TTL,
                RData::PTR(PTR(target)),
            ));
        } else {
            return forward();
        }
        let mut m = respond(&req);
        m.metadata.authoritative = true;
        m.answers = answers;
        let bytes = match m.to_vec() {
            Ok(b) => b,
            Err(_) => return forward(),
        };
        let room = match &req.edns {
            Some(e) => usize::from(e.max_payload().clamp(PLAIN_UDP as u16, EDNS_UDP)),
            None => PLAIN_UDP,
        };
        if udp && bytes.len() > room {
            let mut t = respond(&req);
            t.metadata.authoritative = true;
            t.metadata.truncation = true;
            return reply(&t);
        }
        Outcome::Reply(bytes)
    }

    /// The name of the endpoint holding the address a reverse name (`….in-addr.arpa`,
    /// `….ip6.arpa`) stands for, on one of `networks`.
    fn ptr(&self, name: &Name, networks: &[String]) -> Option<Name> {
        let net = name.parse_arpa_name().ok()?;
        if net.prefix_len() != net.max_prefix_len() {
            return None;
        }
        let e = self.entries.iter().find(|e| {
            networks.contains(&e.network_id) && e.addrs.contains(&net.addr()) && e.primary.is_some()
        })?;
        let mut n = Name::from_ascii(e.primary.as_deref()?).ok()?;
        n.set_fqdn(true);
        Some(n)
    }
}

/// A response to `req` with its id, question and flags (recursion available: the
/// rest is forwarded); EDNS when it asked with EDNS.
fn respond(req: &Message) -> Message {
    let mut m = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.metadata.recursion_available = true;
    m.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_UDP);
        m.edns = Some(e);
    }
    m
}

fn reply(m: &Message) -> Outcome {
    m.to_vec().map_or(Outcome::Drop, Outcome::Reply)
}

/// A SERVFAIL answer to `query` (no upstream answered), if it is a DNS query.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut m = respond(&req);
    m.metadata.response_code = ResponseCode::ServFail;
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use lanyard_core::dnsname::DnsName;
    use lanyard_core::testing::EndpointBuilder;

    /// An endpoint of network `net` (its id: `net` repeated) in namespace (4, `ns`).
    fn ep(name: Option<&str>, net: &str, ns: u64, addrs: &[&str]) -> Endpoint {
        EndpointBuilder::new(net)
            .id(format!("{ns:064x}"))
            .name(name)
            .network_id(net.repeat(64 / net.len()))
            .netns(format!("/run/netns/n{ns}"), (4, ns))
            .addrs(addrs)
            .build()
    }

    fn ask(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    fn records(o: Outcome) -> Vec<String> {
        match o {
            Outcome::Reply(b) => {
                let m = Message::from_vec(&b).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                m.answers.iter().map(|r| r.data.to_string()).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    fn lab() -> Table {
        let mut web = ep(Some("Web"), "a", 1, &["192.0.2.10/24", "2001:db8::10/64"]);
        web.aliases = vec![DnsName::alias("www").unwrap()];
        let db = ep(Some("db"), "a", 2, &["192.0.2.11/24"]);
        let other = ep(Some("secret"), "b", 3, &["198.51.100.5/24"]);
        // The web namespace is on b too, with an unnamed endpoint.
        let web_b = ep(None, "b", 1, &["198.51.100.10/24"]);
        Table::build(
            &[web, db, other, web_b],
            None,
            &["203.0.113.53".parse().unwrap()],
            &HashMap::new(),
            &HashMap::new(),
        )
    }

    #[test]
    fn names_and_aliases_on_shared_networks_only() {
        let t = lab();
        // db (on a only) sees web's address on a, by name and alias, any case.
        assert_eq!(
            records(t.answer((4, 2), &ask("web.", RecordType::A, false), true)),
            ["192.0.2.10"]
        );
        assert_eq!(
            records(t.answer((4, 2), &ask("WWW", RecordType::A, false), true)),
            ["192.0.2.10"]
        );
        assert_eq!(
            records(t.answer((4, 2), &ask("web", RecordType::AAAA, false), true)),
            ["2001:db8::10"]
        );
        // Known name, no address of the family: an empty answer, not forwarded.
        assert!(records(t.answer((4, 2), &ask("db", RecordType::AAAA, false), true)).is_empty());
        // secret is on b, which db does not share: forwarded.
        let fwd = Outcome::Forward(vec!["203.0.113.53:53".parse().unwrap()]);
        assert_eq!(
            t.answer((4, 2), &ask("secret", RecordType::A, false), true),
            fwd
        );
        assert_eq!(
            t.answer((4, 2), &ask("example.org", RecordType::A, false), true),
            fwd
        );
        // secret (on b) sees web's unnamed b endpoint under its namespace's name.
        assert_eq!(
            records(t.answer((4, 3), &ask("web", RecordType::A, false), true)),
            ["198.51.100.10"]
        );
        // web itself sees both.
        let mut both = records(t.answer((4, 1), &ask("web", RecordType::A, false), true));
        both.sort();
        assert_eq!(both, ["192.0.2.10", "198.51.100.10"]);
    }

    #[test]
    fn ptr_for_shared_addresses_else_forwarded() {
        let t = lab();
        assert_eq!(
            records(t.answer(
                (4, 2),
                &ask("10.2.0.192.in-addr.arpa.", RecordType::PTR, false),
                true
            )),
            ["web."]
        );
        let v6 = Name::from(IpAddr::from(
            "2001:db8::10".parse::<std::net::Ipv6Addr>().unwrap(),
        ));
        assert_eq!(
            records(t.answer((4, 2), &ask(&v6.to_ascii(), RecordType::PTR, false), true)),
            ["web."]
        );
        assert!(matches!(
            t.answer(
                (4, 2),
                &ask("5.100.51.198.in-addr.arpa.", RecordType::PTR, false),
                true
            ),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn a_big_answer_over_udp_is_truncated_but_whole_over_tcp() {
        let eps: Vec<Endpoint> = (1..=60)
            .map(|i| {
                let mut e = ep(Some(&format!("n{i}")), "a", i, &[&format!("10.0.0.{i}/24")]);
                e.aliases = vec![DnsName::alias("pool").unwrap()];
                e
            })
            .collect();
        let t = Table::build(&eps, None, &[], &HashMap::new(), &HashMap::new());
        let q = ask("pool", RecordType::A, false);
        let Outcome::Reply(b) = t.answer((4, 1), &q, true) else {
            panic!()
        };
        let m = Message::from_vec(&b).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty() && b.len() <= 512);
        assert_eq!(records(t.answer((4, 1), &q, false)).len(), 60);
        // With EDNS the asker's buffer (up to 1232) decides.
        let Outcome::Reply(b) = t.answer((4, 1), &ask("pool", RecordType::A, true), true) else {
            panic!()
        };
        assert!(!Message::from_vec(&b).unwrap().metadata.truncation);
    }

    #[test]
    fn upstreams_given_then_the_networks_then_leased_then_the_hosts_and_servfail_without_any() {
        let mut e = ep(Some("x"), "a", 1, &["192.0.2.1/24"]);
        let host: IpAddr = "203.0.113.1".parse().unwrap();
        let (no_given, no_nets) = (HashMap::new(), HashMap::new());
        // Where the namespace of `e` sends its other questions.
        let upstreams = |e: &Endpoint, given: &HashMap<_, _>, nets: &HashMap<_, _>| {
            let t = Table::build(std::slice::from_ref(e), None, &[host], given, nets);
            t.queriers()[&(4, 1)].upstreams.clone()
        };
        let on53 = |a: &str| vec![SocketAddr::new(a.parse().unwrap(), 53)];
        assert_eq!(upstreams(&e, &no_given, &no_nets), on53("203.0.113.1"));
        let mut lease = lanyard_core::lease::Lease::test(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.254".parse().unwrap(),
            600,
        );
        lease.dns = vec!["192.0.2.53".parse().unwrap()];
        e.lease = Some(lease);
        assert_eq!(upstreams(&e, &no_given, &no_nets), on53("192.0.2.53"));
        // The network's -o dns= comes before the lease's.
        let nets = HashMap::from([(e.network_id.clone(), vec!["203.0.113.9".parse().unwrap()])]);
        assert_eq!(upstreams(&e, &no_given, &nets), on53("203.0.113.9"));
        // lanyard run --dns before both.
        let given = HashMap::from([((4, 1), vec!["198.51.100.1".parse().unwrap()])]);
        assert_eq!(upstreams(&e, &given, &nets), on53("198.51.100.1"));
        e.lease = None;
        let t = Table::build(&[e], None, &[], &HashMap::new(), &HashMap::new());
        let Outcome::Reply(b) = t.answer((4, 1), &ask("example.org", RecordType::A, false), true)
        else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&b).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
        assert_eq!(t.answer((4, 1), b"junk", true), Outcome::Drop);
    }

    #[test]
    fn other_nodes_are_answered_not_served_and_docker_not_served() {
        let mut far = ep(Some("far"), "a", 7, &["192.0.2.70/24"]);
        far.node = Some("other".into());
        let mut d = ep(None, "a", 8, &["192.0.2.80/24"]);
        d.owner = Some(Owner::Docker {
            network_id: "a".repeat(64),
            endpoint_id: "e".repeat(64),
        });
        let near = ep(Some("near"), "a", 9, &["192.0.2.90/24"]);
        let t = Table::build(
            &[far, d, near],
            Some("me"),
            &[],
            &HashMap::new(),
            &HashMap::new(),
        );
        assert_eq!(t.queriers().keys().collect::<Vec<_>>(), [&(4, 9)]);
        assert_eq!(
            records(t.answer((4, 9), &ask("far", RecordType::A, false), true)),
            ["192.0.2.70"]
        );
    }
}
