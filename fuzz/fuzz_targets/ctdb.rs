//! What keel reads from CTDB (src/cluster): ctdbd's packets on its unix socket
//! (`ctdb/protocol.rs`: the packet framing, control replies, messages, node maps, tickle
//! lists, the address of a RELEASE_IP/TAKE_IP message), the judgement of a decoded node map
//! the serving rule and the reservation gate make (`ctdb_tool.rs` ClusterView), and the
//! reservation record `ctdb pfetch` returns (`pr_store.rs`).
//!
//! Input: a selector byte, then the bytes of that kind.
//!
//! Invariants: nothing panics; a decoded address re-encodes to a message that decodes to the
//! same address; a node map that decodes can be judged from any node; a record that decodes re-encodes to
//! one that decodes the same.
#![no_main]

use keel::cluster::ctdb::protocol::{
    decode_header, decode_ip_message, decode_nodemap, decode_packet, decode_tickle_list,
    encode_ip_message, packet_length,
};
use keel::cluster::ctdb_tool::ClusterView;
use keel::cluster::pr_store::decode_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Some(prefix) = rest.get(..4) {
                let prefix: [u8; 4] = prefix.try_into().unwrap_or_default();
                if let Ok(len) = packet_length(prefix) {
                    if let Some(packet) = rest.get(..len) {
                        let _ = decode_packet(packet);
                    }
                }
            }
            let _ = decode_header(rest);
            let _ = decode_packet(rest);
        }
        1 => {
            if let Ok(nodes) = decode_nodemap(rest) {
                for this_pnn in nodes.iter().map(|n| n.pnn).chain([u32::MAX]) {
                    let view = ClusterView::from_nodemap(&nodes, this_pnn, true);
                    let _ = view.allows_changes();
                    let _ = view.may_serve();
                }
            }
        }
        2 => {
            let _ = decode_tickle_list(rest);
        }
        3 => {
            if let Ok(ip) = decode_ip_message(rest) {
                assert_eq!(decode_ip_message(&encode_ip_message(ip)).ok(), Some(ip));
            }
        }
        _ => {
            let _ = decode_record(&String::from_utf8_lossy(rest));
        }
    }
});
