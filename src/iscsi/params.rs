//! Login key negotiation (RFC 7143 §6.2, §13): the key table and the negotiated results.
//!
//! Each key the initiator offers is answered by looking it up in [`KEYS`], which says how the
//! result is computed (the RFC's result functions: boolean AND/OR, numerical min/max, first
//! acceptable list item, or declarative). Unknown keys are answered `NotUnderstood`.

use super::settings::Settings;

/// How a key's result is computed (RFC 7143 §6.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Result is `Yes` only if both sides say `Yes`.
    And,
    /// Result is `Yes` if either side says `Yes`.
    Or,
    /// Numerical: the smaller of the offer and ours, offer must be within `lo..=hi`.
    Min { lo: u32, hi: u32 },
    /// Numerical: the larger of the offer and ours.
    Max { lo: u32, hi: u32 },
    /// The first value in the initiator's list that we support (digests).
    Digest,
    /// Each side declares its own value; nothing is answered.
    Declare,
    /// Handled by the login state machine itself (names, session type, authentication).
    Login,
    /// A key from RFC 3720 we always answer with a fixed value (markers, RDMA).
    Fixed(&'static str),
}

/// One row of the key table.
#[derive(Clone, Copy, Debug)]
pub struct KeyDef {
    pub name: &'static str,
    pub rule: Rule,
    /// Irrelevant in a discovery session (RFC 7143 §13: "Irrelevant when: SessionType=Discovery").
    pub irrelevant_in_discovery: bool,
}

const fn key(name: &'static str, rule: Rule, irrelevant_in_discovery: bool) -> KeyDef {
    KeyDef {
        name,
        rule,
        irrelevant_in_discovery,
    }
}

const LEN_RANGE: (u32, u32) = (512, 16_777_215);

/// The key table (RFC 7143 §13; OFMarker and friends from RFC 3720 §12).
pub const KEYS: &[KeyDef] = &[
    key("HeaderDigest", Rule::Digest, false),
    key("DataDigest", Rule::Digest, false),
    key("MaxConnections", Rule::Min { lo: 1, hi: 65535 }, true),
    key("InitialR2T", Rule::Or, true),
    key("ImmediateData", Rule::And, true),
    key("MaxRecvDataSegmentLength", Rule::Declare, false),
    key(
        "MaxBurstLength",
        Rule::Min {
            lo: LEN_RANGE.0,
            hi: LEN_RANGE.1,
        },
        true,
    ),
    key(
        "FirstBurstLength",
        Rule::Min {
            lo: LEN_RANGE.0,
            hi: LEN_RANGE.1,
        },
        true,
    ),
    key("DefaultTime2Wait", Rule::Max { lo: 0, hi: 3600 }, false),
    key("DefaultTime2Retain", Rule::Min { lo: 0, hi: 3600 }, false),
    key("MaxOutstandingR2T", Rule::Min { lo: 1, hi: 65535 }, true),
    key("DataPDUInOrder", Rule::Or, true),
    key("DataSequenceInOrder", Rule::Or, true),
    key("ErrorRecoveryLevel", Rule::Min { lo: 0, hi: 2 }, false),
    key("InitiatorName", Rule::Login, false),
    key("InitiatorAlias", Rule::Login, false),
    key("TargetName", Rule::Login, false),
    key("SessionType", Rule::Login, false),
    key("AuthMethod", Rule::Login, false),
    key("TargetAlias", Rule::Declare, false),
    key("TargetAddress", Rule::Declare, false),
    key("TargetPortalGroupTag", Rule::Declare, false),
    key("OFMarker", Rule::Fixed("No"), false),
    key("IFMarker", Rule::Fixed("No"), false),
    key("OFMarkInt", Rule::Fixed("Irrelevant"), false),
    key("IFMarkInt", Rule::Fixed("Irrelevant"), false),
    key("RDMAExtensions", Rule::Fixed("No"), false),
    key("TaskReporting", Rule::Fixed("RFC3720"), true),
];

pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// The operational parameters of a session and connection after login. Defaults are the
/// RFC's, which apply to every key the initiator does not negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the most we may put in one PDU we send.
    pub initiator_max_recv: u32,
    /// Ours: the most the initiator may put in one PDU.
    pub target_max_recv: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
}

impl Negotiated {
    /// RFC defaults, with our declared receive limit.
    pub fn defaults(settings: &Settings) -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            initiator_max_recv: 8192,
            target_max_recv: settings.max_recv_data_segment_length,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

/// What to answer for one offered key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Reply `key=value`.
    Reply(String),
    /// Nothing to reply (declarative key recorded).
    Silent,
}

/// Our side's value for a negotiated key, from configuration.
fn ours(name: &str, s: &Settings) -> u32 {
    match name {
        // Multiple connections per session arrive with a later issue.
        "MaxConnections" => 1,
        "MaxBurstLength" => s.max_burst_length,
        "FirstBurstLength" => s.first_burst_length,
        "MaxOutstandingR2T" => s.max_outstanding_r2t,
        "DefaultTime2Wait" => 2,
        "DefaultTime2Retain" => 20,
        // keel implements ErrorRecoveryLevel 0 only.
        "ErrorRecoveryLevel" => 0,
        _ => 0,
    }
}

fn our_bool(name: &str, s: &Settings) -> bool {
    match name {
        "InitialR2T" => s.initial_r2t,
        "ImmediateData" => s.immediate_data,
        // We accept data PDUs and sequences only in order (ERL 0).
        "DataPDUInOrder" | "DataSequenceInOrder" => true,
        _ => false,
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Parses a numerical value: decimal, or hex with 0x (RFC 7143 §5.1).
pub fn parse_number(value: &str) -> Option<u32> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u32::from_str_radix(hex, 16).ok()
    } else {
        value.parse().ok()
    }
}

/// Negotiates one operational key the initiator offered, updating `n`. `discovery` marks a
/// discovery session. Keys with [`Rule::Login`] must be handled by the caller.
pub fn negotiate(
    def: &KeyDef,
    value: &str,
    discovery: bool,
    settings: &Settings,
    n: &mut Negotiated,
) -> Answer {
    if discovery && def.irrelevant_in_discovery {
        return Answer::Reply("Irrelevant".into());
    }
    match def.rule {
        Rule::And | Rule::Or => {
            let Some(theirs) = parse_bool(value) else {
                return Answer::Reply("Reject".into());
            };
            let mine = our_bool(def.name, settings);
            let result = if def.rule == Rule::And {
                theirs && mine
            } else {
                theirs || mine
            };
            match def.name {
                "InitialR2T" => n.initial_r2t = result,
                "ImmediateData" => n.immediate_data = result,
                "DataPDUInOrder" => n.data_pdu_in_order = result,
                "DataSequenceInOrder" => n.data_sequence_in_order = result,
                _ => {}
            }
            Answer::Reply(yes_no(result))
        }
        Rule::Min { lo, hi } | Rule::Max { lo, hi } => {
            let Some(theirs) = parse_number(value).filter(|v| (lo..=hi).contains(v)) else {
                return Answer::Reply("Reject".into());
            };
            let mine = ours(def.name, settings);
            let result = if matches!(def.rule, Rule::Min { .. }) {
                theirs.min(mine)
            } else {
                theirs.max(mine)
            };
            match def.name {
                "MaxConnections" => n.max_connections = result,
                "MaxBurstLength" => n.max_burst = result,
                "FirstBurstLength" => n.first_burst = result,
                "MaxOutstandingR2T" => n.max_outstanding_r2t = result,
                "DefaultTime2Wait" => n.default_time2wait = result,
                "DefaultTime2Retain" => n.default_time2retain = result,
                "ErrorRecoveryLevel" => n.error_recovery_level = result,
                _ => {}
            }
            Answer::Reply(result.to_string())
        }
        Rule::Digest => {
            // We support both; the initiator's order of preference wins (RFC 7143 §6.2.1).
            let choice = value
                .split(',')
                .map(str::trim)
                .find(|v| *v == "CRC32C" || *v == "None");
            let Some(choice) = choice else {
                return Answer::Reply("Reject".into());
            };
            let on = choice == "CRC32C";
            if def.name == "HeaderDigest" {
                n.header_digest = on;
            } else {
                n.data_digest = on;
            }
            Answer::Reply(choice.into())
        }
        Rule::Declare => {
            if def.name == "MaxRecvDataSegmentLength" {
                match parse_number(value).filter(|v| (LEN_RANGE.0..=LEN_RANGE.1).contains(v)) {
                    Some(v) => n.initiator_max_recv = v,
                    None => return Answer::Reply("Reject".into()),
                }
            }
            Answer::Silent
        }
        Rule::Fixed(answer) => Answer::Reply(answer.into()),
        Rule::Login => Answer::Silent,
    }
}

/// Makes the results consistent once negotiation is over (RFC 7143 §13.14: FirstBurstLength
/// may not exceed MaxBurstLength).
pub fn finish(n: &mut Negotiated) {
    n.first_burst = n.first_burst.min(n.max_burst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(key: &str, value: &str) -> (Answer, Negotiated) {
        let s = Settings::default();
        let mut n = Negotiated::defaults(&s);
        let def = lookup(key).unwrap();
        (negotiate(def, value, false, &s, &mut n), n)
    }

    fn reply(s: &str) -> Answer {
        Answer::Reply(s.into())
    }

    #[test]
    fn result_functions_follow_the_rfc() {
        let s = Settings::default();
        assert_eq!(
            run("InitialR2T", "No").0,
            reply(if s.initial_r2t { "Yes" } else { "No" })
        );
        assert_eq!(run("InitialR2T", "Yes").0, reply("Yes"));
        assert_eq!(run("ImmediateData", "No").0, reply("No"));
        assert_eq!(run("ImmediateData", "Yes").0, reply("Yes"));
        assert_eq!(
            run("MaxBurstLength", "16776192").0,
            reply(&s.max_burst_length.to_string())
        );
        assert_eq!(run("MaxBurstLength", "4096").1.max_burst, 4096);
        assert_eq!(run("DefaultTime2Wait", "0").0, reply("2"));
        assert_eq!(run("DefaultTime2Retain", "0").0, reply("0"));
        assert_eq!(run("ErrorRecoveryLevel", "2").0, reply("0"));
        assert_eq!(run("MaxConnections", "8").0, reply("1"));
        assert_eq!(
            run("MaxOutstandingR2T", "0x10").0,
            reply(&s.max_outstanding_r2t.min(16).to_string())
        );
    }

    #[test]
    fn digests_take_the_initiators_first_supported_choice() {
        let (a, n) = run("HeaderDigest", "CRC32C,None");
        assert_eq!(a, reply("CRC32C"));
        assert!(n.header_digest);
        assert_eq!(run("DataDigest", "None,CRC32C").0, reply("None"));
        assert_eq!(run("DataDigest", "MD5").0, reply("Reject"));
    }

    #[test]
    fn bad_values_are_rejected_and_declarations_recorded() {
        assert_eq!(run("MaxBurstLength", "100").0, reply("Reject"));
        assert_eq!(run("ImmediateData", "maybe").0, reply("Reject"));
        let (a, n) = run("MaxRecvDataSegmentLength", "65536");
        assert_eq!(a, Answer::Silent);
        assert_eq!(n.initiator_max_recv, 65536);
        assert_eq!(run("MaxRecvDataSegmentLength", "1").0, reply("Reject"));
        assert_eq!(run("OFMarker", "Yes").0, reply("No"));
    }

    #[test]
    fn discovery_sessions_mark_session_keys_irrelevant() {
        let s = Settings::default();
        let mut n = Negotiated::defaults(&s);
        let a = negotiate(lookup("MaxBurstLength").unwrap(), "1024", true, &s, &mut n);
        assert_eq!(a, reply("Irrelevant"));
        let a = negotiate(lookup("HeaderDigest").unwrap(), "None", true, &s, &mut n);
        assert_eq!(a, reply("None"));
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let s = Settings::default();
        let mut n = Negotiated::defaults(&s);
        negotiate(lookup("MaxBurstLength").unwrap(), "8192", false, &s, &mut n);
        negotiate(
            lookup("FirstBurstLength").unwrap(),
            "65536",
            false,
            &s,
            &mut n,
        );
        finish(&mut n);
        assert_eq!(n.first_burst, 8192);
    }
}
