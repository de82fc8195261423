//! Issue 14: every node of a cluster serves the same LUN with the same identity, because
//! target names, portal group tags and LUN identifiers derive from the configuration and
//! never from the node. Two keel instances with the same targets but their own data
//! directories and portals (two nodes) answer the identifying commands byte for byte alike,
//! so an initiator that moves to the other node finds the same I_T nexus and the same disk.

mod common;

use common::{Keel, honest_session};

/// INQUIRY (standard, VPD 0x00/0x80/0x83/0x86/0xB0), REPORT TARGET PORT GROUPS, READ
/// CAPACITY(16) and REPORT LUNS, as (name, status, data).
async fn identity(keel: &Keel) -> Vec<(&'static str, u8, Vec<u8>)> {
    let mut session = honest_session(keel, 1).await;
    let mut answers = Vec::new();
    let commands: [(&str, Vec<u8>); 9] = [
        ("standard INQUIRY", vec![0x12, 0, 0, 0, 255, 0]),
        ("VPD 0x00", vec![0x12, 1, 0x00, 0, 255, 0]),
        (
            "VPD 0x80 unit serial number",
            vec![0x12, 1, 0x80, 0, 255, 0],
        ),
        (
            "VPD 0x83 device identification",
            vec![0x12, 1, 0x83, 0, 255, 0],
        ),
        ("VPD 0x86 extended INQUIRY", vec![0x12, 1, 0x86, 0, 255, 0]),
        ("VPD 0xB0 block limits", vec![0x12, 1, 0xB0, 0, 255, 0]),
        (
            "REPORT TARGET PORT GROUPS",
            vec![0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0],
        ),
        (
            "READ CAPACITY(16)",
            vec![0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        ),
        ("REPORT LUNS", vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
    ];
    for (name, cdb) in commands {
        let result = session.scsi(0, &cdb, 1024, None).await;
        answers.push((name, result.status, result.data.to_vec()));
    }
    answers
}

#[tokio::test]
async fn two_nodes_with_the_same_configuration_present_the_same_disk() {
    let first = Keel::start("8MiB", "").await;
    let second = Keel::start("8MiB", "").await;
    assert_ne!(first.addr, second.addr, "two nodes, two portals");
    assert_ne!(
        first.dir.path(),
        second.dir.path(),
        "and two data directories"
    );
    let (a, b) = (identity(&first).await, identity(&second).await);
    for ((name, status_a, data_a), (_, status_b, data_b)) in a.iter().zip(&b) {
        assert_eq!(*status_a, 0, "{name} on the first node");
        assert!(!data_a.is_empty(), "{name} answered with data");
        assert_eq!(
            (status_a, data_a),
            (status_b, data_b),
            "{name} differs between nodes"
        );
    }
    first.stop().await;
    second.stop().await;
}
