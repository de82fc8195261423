//! Unit tests of the persistent reservation state machine (`persistent_reservations.rs`).

use std::sync::Arc;

use super::*;

const TARGET_PORT: &str = "iqn.2026-01.test:t,t,0x0001";
const CAPS: Capabilities = Capabilities {
    persist_through_power_loss: true,
};

fn nexus(name: &str) -> Nexus {
    Nexus {
        initiator_port: Arc::from(format!("iqn.2026-01.test:{name},i,0x00023d000001")),
        target_port: Arc::from(TARGET_PORT),
        relative_port: 1,
    }
}

fn cdb(service_action: u8, type_code: u8, len: u32) -> ProutCdb {
    ProutCdb {
        service_action,
        scope: 0,
        type_code,
        parameter_list_length: len,
    }
}

fn params(key: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut data = vec![0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sark.to_be_bytes());
    data[20] = flags;
    data
}

/// Runs a basic-parameter-list service action.
fn run(
    state: &PrState,
    n: &Nexus,
    sa: u8,
    type_code: u8,
    key: u64,
    sark: u64,
    flags: u8,
) -> Result<Outcome, Refusal> {
    apply_prout(
        state,
        n,
        &cdb(sa, type_code, 24),
        &params(key, sark, flags),
        CAPS,
    )
}

fn ok(result: Result<Outcome, Refusal>) -> Outcome {
    result.expect("service action succeeds")
}

fn register(state: &PrState, n: &Nexus, key: u64) -> PrState {
    ok(run(state, n, prout_sa::REGISTER, 0, 0, key, 0)).state
}

fn keys(state: &PrState) -> Vec<u64> {
    state.registrations.iter().map(|r| r.key).collect()
}

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_AR: u8 = 8;

#[test]
fn register_reregister_and_unregister() {
    let a = nexus("a");
    let s = register(&PrState::default(), &a, 0x11);
    assert_eq!((keys(&s), s.generation), (vec![0x11], 1));
    // An unregistered nexus must send RESERVATION KEY 0; a registered one its own key.
    assert_eq!(
        run(&s, &nexus("b"), prout_sa::REGISTER, 0, 5, 0x22, 0),
        Err(Refusal::Conflict)
    );
    assert_eq!(
        run(&s, &a, prout_sa::REGISTER, 0, 0, 0x12, 0),
        Err(Refusal::Conflict)
    );
    let s = ok(run(&s, &a, prout_sa::REGISTER, 0, 0x11, 0x12, 0)).state;
    assert_eq!((keys(&s), s.generation), (vec![0x12], 2));
    // Unregister.
    let s = ok(run(&s, &a, prout_sa::REGISTER, 0, 0x12, 0, 0)).state;
    assert_eq!((keys(&s), s.generation), (Vec::<u64>::new(), 3));
    // Unregistering an unregistered nexus changes nothing, not even the generation.
    let same = ok(run(&s, &a, prout_sa::REGISTER, 0, 0, 0, 0)).state;
    assert_eq!(same, s);
}

#[test]
fn register_and_ignore_existing_key() {
    let a = nexus("a");
    let s = ok(run(
        &PrState::default(),
        &a,
        prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY,
        0,
        0x999,
        0x11,
        0,
    ))
    .state;
    let s = ok(run(
        &s,
        &a,
        prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY,
        0,
        0x999,
        0x22,
        0,
    ))
    .state;
    assert_eq!((keys(&s), s.generation), (vec![0x22], 2));
    // SPEC_I_PT is not allowed with it.
    let mut data = params(0, 1, 0x08);
    data.extend_from_slice(&[0, 0, 0, 0]);
    let r = apply_prout(
        &s,
        &nexus("b"),
        &cdb(prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 28),
        &data,
        CAPS,
    );
    assert!(matches!(r, Err(Refusal::Check(s)) if s.asc == 0x26));
}

#[test]
fn parameter_list_length_must_be_24() {
    let a = nexus("a");
    let r = apply_prout(
        &PrState::default(),
        &a,
        &cdb(prout_sa::REGISTER, 0, 20),
        &params(0, 1, 0),
        CAPS,
    );
    assert_eq!(r, Err(Refusal::Check(Sense::parameter_list_length_error())));
    // Data shorter than the CDB's parameter list length.
    let r = apply_prout(
        &PrState::default(),
        &a,
        &cdb(prout_sa::REGISTER, 0, 24),
        &[0; 10],
        CAPS,
    );
    assert_eq!(r, Err(Refusal::Check(Sense::parameter_list_length_error())));
}

#[test]
fn aptpl_needs_a_store() {
    let a = nexus("a");
    let none = Capabilities {
        persist_through_power_loss: false,
    };
    let r = apply_prout(
        &PrState::default(),
        &a,
        &cdb(prout_sa::REGISTER, 0, 24),
        &params(0, 1, 0x01),
        none,
    );
    assert!(matches!(r, Err(Refusal::Check(s)) if s.asc == 0x26));
    let s = ok(run(
        &PrState::default(),
        &a,
        prout_sa::REGISTER,
        0,
        0,
        1,
        0x01,
    ))
    .state;
    assert!(s.aptpl);
    let s = ok(run(&s, &a, prout_sa::REGISTER, 0, 1, 2, 0)).state;
    assert!(!s.aptpl);
}

#[test]
fn reserve_and_release_keep_the_generation() {
    let a = nexus("a");
    let s = register(&PrState::default(), &a, 0x11);
    for code in [1u8, 3, 5, 6, 7, 8] {
        let reserved = ok(run(&s, &a, prout_sa::RESERVE, code, 0x11, 0, 0)).state;
        assert_eq!(reserved.generation, s.generation);
        assert!(reserved.is_holder(&a));
        let pr_type = PrType::from_code(code).unwrap();
        assert_eq!(reserved.reservation.as_ref().unwrap().pr_type, pr_type);
        // Repeating it is fine, changing its type is not.
        assert!(run(&reserved, &a, prout_sa::RESERVE, code, 0x11, 0, 0).is_ok());
        let other = if code == 1 { 3 } else { 1 };
        assert_eq!(
            run(&reserved, &a, prout_sa::RESERVE, other, 0x11, 0, 0),
            Err(Refusal::Conflict)
        );
        // Releasing with the wrong type is an invalid release.
        assert_eq!(
            run(&reserved, &a, prout_sa::RELEASE, other, 0x11, 0, 0),
            Err(Refusal::Check(invalid_release()))
        );
        let released = ok(run(&reserved, &a, prout_sa::RELEASE, code, 0x11, 0, 0)).state;
        assert_eq!(released, s);
    }
}

#[test]
fn reserve_checks_registration_key_scope_and_type() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&PrState::default(), &a, 0x11);
    assert_eq!(
        run(&s, &b, prout_sa::RESERVE, WE, 0, 0, 0),
        Err(Refusal::Conflict)
    );
    assert_eq!(
        run(&s, &a, prout_sa::RESERVE, WE, 0x12, 0, 0),
        Err(Refusal::Conflict)
    );
    let r = run(&s, &a, prout_sa::RESERVE, 2, 0x11, 0, 0);
    assert_eq!(
        r,
        Err(Refusal::Check(Sense::invalid_field_in_cdb(2, Some(3))))
    );
    let mut bad_scope = cdb(prout_sa::RESERVE, WE, 24);
    bad_scope.scope = 1;
    let r = apply_prout(&s, &a, &bad_scope, &params(0x11, 0, 0), CAPS);
    assert_eq!(
        r,
        Err(Refusal::Check(Sense::invalid_field_in_cdb(2, Some(7))))
    );
}

#[test]
fn another_registrant_cannot_reserve_or_release() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    let s = ok(run(&s, &a, prout_sa::RESERVE, EA, 0x11, 0, 0)).state;
    assert_eq!(
        run(&s, &b, prout_sa::RESERVE, EA, 0x22, 0, 0),
        Err(Refusal::Conflict)
    );
    // A non-holder's RELEASE does nothing.
    let after = ok(run(&s, &b, prout_sa::RELEASE, EA, 0x22, 0, 0));
    assert_eq!(after.state, s);
}

#[test]
fn release_of_registrants_only_notifies_the_others() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    let s = ok(run(&s, &a, prout_sa::RESERVE, WE_RO, 0x11, 0, 0)).state;
    let out = ok(run(&s, &a, prout_sa::RELEASE, WE_RO, 0x11, 0, 0));
    assert_eq!(out.notices.len(), 1);
    assert_eq!(out.notices[0].sense, reservations_released());
    assert!(out.notices[0].to.iter().any(|r| r.covers(&b)));
    // Plain Write Exclusive: no notice.
    let s = ok(run(&out.state, &a, prout_sa::RESERVE, WE, 0x11, 0, 0)).state;
    let out = ok(run(&s, &a, prout_sa::RELEASE, WE, 0x11, 0, 0));
    assert!(out.notices.is_empty());
}

#[test]
fn unregistering_the_holder_releases_all_registrants_only_with_the_last() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    // Exclusive Access: the holder unregisters, the reservation goes.
    let ea = ok(run(&s, &a, prout_sa::RESERVE, EA, 0x11, 0, 0)).state;
    let gone = ok(run(&ea, &a, prout_sa::REGISTER, 0, 0x11, 0, 0)).state;
    assert_eq!(gone.reservation, None);
    // Registrants only: released, and the others hear RESERVATIONS RELEASED.
    let ro = ok(run(&s, &a, prout_sa::RESERVE, WE_RO, 0x11, 0, 0)).state;
    let out = ok(run(&ro, &a, prout_sa::REGISTER, 0, 0x11, 0, 0));
    assert_eq!(out.state.reservation, None);
    assert_eq!(out.notices[0].sense, reservations_released());
    // All registrants: stays while anyone is registered.
    let ar = ok(run(&s, &a, prout_sa::RESERVE, EA_AR, 0x11, 0, 0)).state;
    let one_left = ok(run(&ar, &a, prout_sa::REGISTER, 0, 0x11, 0, 0)).state;
    assert!(one_left.is_holder(&b));
    let none_left = ok(run(&one_left, &b, prout_sa::REGISTER, 0, 0x22, 0, 0)).state;
    assert_eq!(none_left.reservation, None);
}

#[test]
fn clear_removes_everything_and_preempts_the_others() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    let s = ok(run(&s, &a, prout_sa::RESERVE, EA, 0x11, 0, 0)).state;
    assert_eq!(
        run(&s, &b, prout_sa::CLEAR, 0, 0x23, 0, 0),
        Err(Refusal::Conflict)
    );
    let out = ok(run(&s, &b, prout_sa::CLEAR, 0, 0x22, 0, 0));
    assert!(out.state.registrations.is_empty());
    assert_eq!(out.state.reservation, None);
    assert_eq!(out.state.generation, s.generation + 1);
    assert_eq!(out.notices[0].sense, reservations_preempted());
}

#[test]
fn preempt_without_reservation_removes_registrations() {
    // libiscsi ProutPreempt.RemoveRegistration.
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    let out = ok(run(&s, &b, prout_sa::PREEMPT, EA, 0x22, 0x11, 0));
    assert_eq!(keys(&out.state), vec![0x22]);
    assert_eq!(out.state.generation, s.generation + 1);
    assert_eq!(out.state.reservation, None);
    assert_eq!(out.notices[0].sense, registrations_preempted());
    assert!(out.notices[0].to[0].covers(&a));
    // A key nobody has: conflict. Key zero without an all-registrants reservation: invalid.
    assert_eq!(
        run(&s, &b, prout_sa::PREEMPT, EA, 0x22, 0x33, 0),
        Err(Refusal::Conflict)
    );
    assert!(matches!(
        run(&s, &b, prout_sa::PREEMPT, EA, 0x22, 0, 0),
        Err(Refusal::Check(s)) if s.asc == 0x26
    ));
}

#[test]
fn preempting_the_holder_takes_over_the_reservation() {
    let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
    let s = register(
        &register(&register(&PrState::default(), &a, 0x11), &b, 0x22),
        &c,
        0x33,
    );
    let s = ok(run(&s, &a, prout_sa::RESERVE, WE, 0x11, 0, 0)).state;
    let out = ok(run(&s, &b, prout_sa::PREEMPT, EA, 0x22, 0x11, 0));
    assert!(out.state.is_holder(&b));
    assert_eq!(
        out.state.reservation.as_ref().unwrap().pr_type,
        PrType::ExclusiveAccess
    );
    assert_eq!(keys(&out.state), vec![0x22, 0x33]);
    // a lost its registration; the type changed, so c hears RESERVATIONS RELEASED.
    let senses: Vec<_> = out.notices.iter().map(|n| n.sense.clone()).collect();
    assert!(senses.contains(&registrations_preempted()));
    assert!(senses.contains(&reservations_released()));
    assert!(out.abort.is_empty(), "PREEMPT aborts nothing");
    // PREEMPT AND ABORT also names the preempted registrations whose tasks are aborted
    // (they end with TASK ABORTED, TAS = 1, so no COMMANDS CLEARED unit attention).
    let out = ok(run(&s, &b, prout_sa::PREEMPT_AND_ABORT, WE, 0x22, 0x11, 0));
    let senses: Vec<_> = out.notices.iter().map(|n| n.sense.clone()).collect();
    assert!(senses.contains(&registrations_preempted()));
    assert!(!senses.contains(&reservations_released()));
    assert_eq!(out.abort.len(), 1);
    assert!(out.abort[0].covers(&a) && !out.abort[0].covers(&b));
}

#[test]
fn preempt_of_a_non_holder_key_keeps_the_reservation() {
    let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
    let s = register(
        &register(&register(&PrState::default(), &a, 0x11), &b, 0x22),
        &c,
        0x33,
    );
    let s = ok(run(&s, &a, prout_sa::RESERVE, WE, 0x11, 0, 0)).state;
    let out = ok(run(&s, &b, prout_sa::PREEMPT, EA, 0x22, 0x33, 0));
    assert!(out.state.is_holder(&a));
    assert_eq!(keys(&out.state), vec![0x11, 0x22]);
}

#[test]
fn preempt_all_registrants_with_key_zero() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    let s = ok(run(&s, &a, prout_sa::RESERVE, EA_AR, 0x11, 0, 0)).state;
    let out = ok(run(&s, &b, prout_sa::PREEMPT, WE, 0x22, 0, 0));
    assert_eq!(keys(&out.state), vec![0x22]);
    assert!(out.state.is_holder(&b));
    assert!(!out.state.is_holder(&a));
    assert_eq!(
        out.state.reservation.as_ref().unwrap().pr_type,
        PrType::WriteExclusive
    );
}

/// A state where each nexus registered with its key, in order.
fn registered(with: &[(&Nexus, u64)]) -> PrState {
    with.iter()
        .fold(PrState::default(), |s, (n, key)| register(&s, n, *key))
}

/// The unit attentions `out` raises, as `persistent_reserve_out` delivers them: to each of the `known`
/// nexuses some notice's registrations cover, never to the sender (SPC-4 r36f §5.13.11.2.4.3
/// f), §5.13.11.2.5 d)). Each as (initiator port, sense).
fn delivered(out: &Outcome, sender: &Nexus, known: &[&Nexus]) -> Vec<(String, Sense)> {
    let mut to = Vec::new();
    for notice in &out.notices {
        for n in known.iter().filter(|n| **n != sender) {
            if notice.to.iter().any(|r| r.covers(n)) {
                to.push((n.initiator_port.to_string(), notice.sense.clone()));
            }
        }
    }
    to
}

/// The nexuses whose tasks PREEMPT AND ABORT aborts, as `persistent_reserve_out` picks them: covered by
/// `out.abort`, never the sender (§5.13.11.2.6 c) spares the PERSISTENT RESERVE OUT itself).
fn aborted(out: &Outcome, sender: &Nexus, known: &[&Nexus]) -> Vec<String> {
    known
        .iter()
        .filter(|n| **n != sender && out.abort.iter().any(|r| r.covers(n)))
        .map(|n| n.initiator_port.to_string())
        .collect()
}

fn port(n: &Nexus) -> String {
    n.initiator_port.to_string()
}

#[test]
fn preempting_its_own_key_unregisters_a_non_holder() {
    // SPC-4 r36f §5.13.11.2.5: "It is not an error ... to set the RESERVATION KEY and the
    // SERVICE ACTION RESERVATION KEY to the same value ... The registration is removed." (a
    // cluster's fence agent re-registering a node does this).
    let (a, b) = (nexus("a"), nexus("b"));
    let s = registered(&[(&a, 0x11), (&b, 0x22)]);
    let held = ok(run(&s, &a, prout_sa::RESERVE, WE, 0x11, 0, 0)).state;
    for (s, sa) in [
        (&held, prout_sa::PREEMPT),
        (&held, prout_sa::PREEMPT_AND_ABORT),
        (&s, prout_sa::PREEMPT),
        (&s, prout_sa::PREEMPT_AND_ABORT),
    ] {
        let out = ok(run(s, &b, sa, EA, 0x22, 0x22, 0));
        assert_eq!(
            keys(&out.state),
            vec![0x11],
            "the sender's registration went"
        );
        assert!(!out.state.is_registered(&b));
        // The reservation (if any) stays with its holder, type unchanged: TYPE is ignored.
        assert_eq!(out.state.reservation, s.reservation);
        assert_eq!(out.state.generation, s.generation + 1);
        assert_eq!(delivered(&out, &b, &[&a, &b]), vec![], "nobody hears of it");
        assert_eq!(aborted(&out, &b, &[&a, &b]), Vec::<String>::new());
    }
}

#[test]
fn preempting_a_key_shared_with_another_nexus_removes_both() {
    // §5.13.11.2.5 a): "remove the registrations for all I_T nexuses specified by the SERVICE
    // ACTION RESERVATION KEY field"; only the other nexus hears REGISTRATIONS PREEMPTED.
    let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
    let s = registered(&[(&a, 0x11), (&b, 0x22), (&c, 0x22)]);
    let s = ok(run(&s, &a, prout_sa::RESERVE, WE, 0x11, 0, 0)).state;
    let known = [&a, &b, &c];
    let out = ok(run(&s, &b, prout_sa::PREEMPT, WE, 0x22, 0x22, 0));
    assert_eq!(keys(&out.state), vec![0x11]);
    assert!(out.state.is_holder(&a));
    assert_eq!(out.state.reservation, s.reservation);
    assert_eq!(
        delivered(&out, &b, &known),
        vec![(port(&c), registrations_preempted())]
    );
    assert!(out.abort.is_empty(), "PREEMPT aborts nothing");
    // PREEMPT AND ABORT: the same, and c's tasks are aborted, b's are not (§5.13.11.2.6 c)).
    let out = ok(run(&s, &b, prout_sa::PREEMPT_AND_ABORT, WE, 0x22, 0x22, 0));
    assert_eq!(keys(&out.state), vec![0x11]);
    assert_eq!(
        delivered(&out, &b, &known),
        vec![(port(&c), registrations_preempted())]
    );
    assert_eq!(aborted(&out, &b, &known), vec![port(&c)]);
}

#[test]
fn the_holder_preempting_its_own_key_keeps_registration_and_takes_the_new_type() {
    // §5.13.11.2.4.3: "it is not an error for the persistent reservation holder to preempt
    // itself ... the device server shall establish the new persistent reservation and
    // maintain the registration"; b) the other nexuses with that key lose theirs.
    let (a, b, d) = (nexus("a"), nexus("b"), nexus("d"));
    let s = registered(&[(&a, 0x11), (&b, 0x22), (&d, 0x11)]);
    let s = ok(run(&s, &a, prout_sa::RESERVE, WE, 0x11, 0, 0)).state;
    let known = [&a, &b, &d];
    for sa in [prout_sa::PREEMPT, prout_sa::PREEMPT_AND_ABORT] {
        let out = ok(run(&s, &a, sa, EA, 0x11, 0x11, 0));
        assert_eq!(keys(&out.state), vec![0x11, 0x22]);
        assert!(out.state.is_registered(&a) && !out.state.is_registered(&d));
        assert!(out.state.is_holder(&a));
        assert_eq!(
            out.state.reservation.as_ref().map(|r| r.pr_type),
            Some(PrType::ExclusiveAccess)
        );
        // d lost its registration; the type changed, so b hears RESERVATIONS RELEASED (f);
        // a hears nothing.
        let mut heard = delivered(&out, &a, &known);
        heard.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            heard,
            vec![
                (port(&b), reservations_released()),
                (port(&d), registrations_preempted()),
            ]
        );
        let expected_aborts = if sa == prout_sa::PREEMPT_AND_ABORT {
            vec![port(&d)]
        } else {
            vec![]
        };
        assert_eq!(aborted(&out, &a, &known), expected_aborts);
    }
    // Same type: no RESERVATIONS RELEASED.
    let out = ok(run(&s, &a, prout_sa::PREEMPT, WE, 0x11, 0x11, 0));
    assert!(out.state.is_holder(&a));
    assert_eq!(
        delivered(&out, &a, &known),
        vec![(port(&d), registrations_preempted())]
    );
    // d, registered with the holder's key but not holding, preempting that key takes the
    // reservation and keeps its registration; a loses both (§5.13.11.2.4.3 a) to c)).
    let out = ok(run(&s, &d, prout_sa::PREEMPT, WE, 0x11, 0x11, 0));
    assert_eq!(keys(&out.state), vec![0x22, 0x11]);
    assert!(out.state.is_holder(&d) && !out.state.is_registered(&a));
    assert_eq!(
        delivered(&out, &d, &known),
        vec![(port(&a), registrations_preempted())]
    );
}

#[test]
fn preempting_its_own_key_under_an_all_registrants_reservation_unregisters_the_sender() {
    // Table 53: under an all-registrants reservation a non-zero key removes registrations
    // (§5.13.11.2.5); the reservation stays with the remaining registrants and goes with
    // the last one.
    let (a, b) = (nexus("a"), nexus("b"));
    let s = registered(&[(&a, 0x11), (&b, 0x22)]);
    let s = ok(run(&s, &a, prout_sa::RESERVE, EA_AR, 0x11, 0, 0)).state;
    let out = ok(run(&s, &b, prout_sa::PREEMPT_AND_ABORT, WE, 0x22, 0x22, 0));
    assert_eq!(keys(&out.state), vec![0x11]);
    assert_eq!(out.state.reservation, s.reservation);
    assert!(out.state.is_holder(&a) && !out.state.is_holder(&b));
    assert_eq!(delivered(&out, &b, &[&a, &b]), vec![]);
    assert_eq!(aborted(&out, &b, &[&a, &b]), Vec::<String>::new());
    let last = ok(run(&out.state, &a, prout_sa::PREEMPT, WE, 0x11, 0x11, 0));
    assert_eq!(keys(&last.state), Vec::<u64>::new());
    assert_eq!(last.state.reservation, None);
}

#[test]
fn preempting_its_own_all_target_ports_key_tells_its_other_ports() {
    // The sender's registration also covered its nexus through another target port: that
    // nexus lost its registration too and hears REGISTRATIONS PREEMPTED; the sender not.
    let (a, b) = (nexus("a"), nexus("b"));
    let s = ok(run(
        &PrState::default(),
        &a,
        prout_sa::REGISTER,
        0,
        0,
        0x11,
        0x04,
    ))
    .state;
    let s = register(&s, &b, 0x22);
    let mut elsewhere = a.clone();
    elsewhere.target_port = Arc::from("iqn.2026-01.test:t,t,0x0002");
    elsewhere.relative_port = 2;
    let known = [&a, &b, &elsewhere];
    let out = ok(run(&s, &a, prout_sa::PREEMPT_AND_ABORT, WE, 0x11, 0x11, 0));
    assert_eq!(keys(&out.state), vec![0x22]);
    assert!(!out.state.is_registered(&elsewhere));
    assert_eq!(
        delivered(&out, &a, &known),
        vec![(port(&elsewhere), registrations_preempted())]
    );
    assert_eq!(aborted(&out, &a, &known), vec![port(&elsewhere)]);
}

fn iscsi_tid(text: &str, format: u8) -> Vec<u8> {
    let mut tid = vec![(format << 6) | 0x05, 0, 0, 0];
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    body.resize(body.len().div_ceil(4) * 4, 0);
    tid[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
    tid.extend(body);
    tid
}

#[test]
fn spec_i_pt_registers_the_named_ports_too() {
    let a = nexus("a");
    let b = nexus("b");
    let mut tids = iscsi_tid(&b.initiator_port, 1);
    tids.extend(iscsi_tid("iqn.2026-01.test:c", 0));
    let mut data = params(0, 0x77, 0x08);
    data.extend_from_slice(&(tids.len() as u32).to_be_bytes());
    data.extend(tids);
    let len = data.len() as u32;
    let out = ok(apply_prout(
        &PrState::default(),
        &a,
        &cdb(prout_sa::REGISTER, 0, len),
        &data,
        CAPS,
    ));
    assert_eq!(keys(&out.state), vec![0x77, 0x77, 0x77]);
    assert!(out.state.is_registered(&b));
    // A format 00b TransportID covers every ISID of that name.
    let mut c_other_isid = nexus("c");
    c_other_isid.initiator_port = Arc::from("iqn.2026-01.test:c,i,0x400000000009");
    assert!(out.state.is_registered(&c_other_isid));
    assert_eq!(out.state.generation, 1);
    // Naming a registered nexus again is refused, registering nobody.
    let again = apply_prout(
        &out.state,
        &nexus("d"),
        &cdb(prout_sa::REGISTER, 0, len),
        &data,
        CAPS,
    );
    assert!(matches!(again, Err(Refusal::Check(s)) if s.asc == 0x26));
    // SPEC_I_PT from a registered nexus is invalid.
    let r = apply_prout(
        &out.state,
        &a,
        &cdb(prout_sa::REGISTER, 0, len),
        &{
            let mut d = data.clone();
            d[..8].copy_from_slice(&0x77u64.to_be_bytes());
            d
        },
        CAPS,
    );
    assert!(matches!(r, Err(Refusal::Check(s)) if s.asc == 0x26));
}

#[test]
fn transport_ids_are_validated() {
    // Not iSCSI (FC = 0).
    let mut tid = iscsi_tid("iqn.x", 0);
    tid[0] = 0x00;
    assert!(parse_transport_id(&tid, 0).is_err());
    // Format 01b without an ISID, format 00b with one.
    assert!(parse_transport_id(&iscsi_tid("iqn.x", 1), 0).is_err());
    assert!(parse_transport_id(&iscsi_tid("iqn.x,i,0x000000000001", 0), 0).is_err());
    // Bad ISID.
    assert!(parse_transport_id(&iscsi_tid("iqn.x,i,0x00000000001z", 1), 0).is_err());
    // Truncated.
    assert!(parse_transport_id(&iscsi_tid("iqn.x", 0)[..6], 0).is_err());
    let (spec, len) = parse_transport_id(&iscsi_tid("IQN.X,i,0x00000000000A", 1), 0).unwrap();
    assert_eq!((spec.as_str(), len), ("iqn.x,i,0x00000000000a", 28));
    // Encoding round-trips.
    let encoded = encode_transport_id("iqn.x,i,0x00000000000a");
    assert_eq!(encoded.len() % 4, 0);
    assert!(encoded.len() >= 24);
    assert_eq!(
        parse_transport_id(&encoded, 0).unwrap().0,
        "iqn.x,i,0x00000000000a"
    );
    assert_eq!(encode_transport_id("iqn.x")[0], 0x05);
}

fn move_params(key: u64, sark: u64, unreg: bool, port: u16, tid: &[u8]) -> Vec<u8> {
    let mut data = vec![0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sark.to_be_bytes());
    data[17] = if unreg { 0x02 } else { 0 };
    data[18..20].copy_from_slice(&port.to_be_bytes());
    data[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    data.extend_from_slice(tid);
    data
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&PrState::default(), &a, 0x11);
    let tid = iscsi_tid(&b.initiator_port, 1);
    let data = move_params(0x11, 0x22, true, 1, &tid);
    let move_cdb = cdb(prout_sa::REGISTER_AND_MOVE, 0, data.len() as u32);
    // No reservation to move: conflict.
    assert_eq!(
        apply_prout(&s, &a, &move_cdb, &data, CAPS),
        Err(Refusal::Conflict)
    );
    let s = ok(run(&s, &a, prout_sa::RESERVE, EA, 0x11, 0, 0)).state;
    let out = ok(apply_prout(&s, &a, &move_cdb, &data, CAPS));
    assert!(out.state.is_holder(&b));
    assert!(!out.state.is_registered(&a), "UNREG removes the sender");
    assert_eq!(keys(&out.state), vec![0x22]);
    assert_eq!(out.state.generation, s.generation + 1);
    // Only the holder may move; not to itself; not with key zero; not to another port.
    assert_eq!(
        apply_prout(&out.state, &a, &move_cdb, &data, CAPS),
        Err(Refusal::Conflict)
    );
    let to_self = move_params(0x11, 0x22, false, 1, &iscsi_tid(&a.initiator_port, 1));
    let r = apply_prout(
        &s,
        &a,
        &cdb(prout_sa::REGISTER_AND_MOVE, 0, to_self.len() as u32),
        &to_self,
        CAPS,
    );
    assert!(matches!(r, Err(Refusal::Check(s)) if s.asc == 0x26));
    let zero = move_params(0x11, 0, false, 1, &tid);
    assert!(matches!(
        apply_prout(&s, &a, &move_cdb, &zero, CAPS),
        Err(Refusal::Check(s)) if s.asc == 0x26
    ));
    let port = move_params(0x11, 0x22, false, 9, &tid);
    assert!(matches!(
        apply_prout(&s, &a, &move_cdb, &port, CAPS),
        Err(Refusal::Check(s)) if s.asc == 0x26
    ));
    // All-registrants reservations cannot move.
    let ar = ok(run(
        &register(&PrState::default(), &a, 0x11),
        &a,
        prout_sa::RESERVE,
        EA_AR,
        0x11,
        0,
        0,
    ))
    .state;
    assert_eq!(
        apply_prout(&ar, &a, &move_cdb, &data, CAPS),
        Err(Refusal::Conflict)
    );
}

#[test]
fn all_target_ports_registration_covers_other_ports() {
    let a = nexus("a");
    let s = ok(run(
        &PrState::default(),
        &a,
        prout_sa::REGISTER,
        0,
        0,
        5,
        0x04,
    ))
    .state;
    let mut elsewhere = a.clone();
    elsewhere.target_port = Arc::from("iqn.2026-01.test:t,t,0x0002");
    elsewhere.relative_port = 2;
    assert!(s.is_registered(&elsewhere));
    let plain = register(&PrState::default(), &a, 5);
    assert!(!plain.is_registered(&elsewhere));
}

#[test]
fn registrations_are_bounded() {
    let mut s = PrState::default();
    for i in 0..MAX_REGISTRATIONS {
        s = register(&s, &nexus(&format!("n{i}")), 1 + i as u64);
    }
    assert_eq!(
        run(&s, &nexus("one-more"), prout_sa::REGISTER, 0, 0, 7, 0),
        Err(Refusal::Check(insufficient_registration_resources()))
    );
}

#[test]
fn prin_data_layouts() {
    let (a, b) = (nexus("a"), nexus("b"));
    let s = register(&register(&PrState::default(), &a, 0x11), &b, 0x22);
    let keys_data = prin_data(&s, prin_sa::READ_KEYS, CAPS);
    assert_eq!(&keys_data[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(&keys_data[8..16], &0x11u64.to_be_bytes());
    let none = prin_data(&s, prin_sa::READ_RESERVATION, CAPS);
    assert_eq!(none, vec![0, 0, 0, 2, 0, 0, 0, 0]);
    let s = ok(run(&s, &a, prout_sa::RESERVE, EA, 0x11, 0, 0)).state;
    let res = prin_data(&s, prin_sa::READ_RESERVATION, CAPS);
    assert_eq!(res.len(), 24);
    assert_eq!(&res[8..16], &0x11u64.to_be_bytes());
    assert_eq!(res[21], 0x03);
    // All registrants: key zero.
    let mut ar = s.clone();
    ar.reservation = Some(Reservation {
        pr_type: PrType::WriteExclusiveAllRegistrants,
        holder: None,
    });
    assert_eq!(
        &prin_data(&ar, prin_sa::READ_RESERVATION, CAPS)[8..16],
        &[0; 8]
    );
    let caps = prin_data(&s, prin_sa::REPORT_CAPABILITIES, CAPS);
    assert_eq!(caps, vec![0, 8, 0x1D, 0x90, 0xEA, 0x01, 0, 0]);
    let full = prin_data(&s, prin_sa::READ_FULL_STATUS, CAPS);
    let additional = u32::from_be_bytes(full[4..8].try_into().unwrap()) as usize;
    assert_eq!(additional, full.len() - 8);
    // First descriptor: a, the holder, EA, relative port 1, a format 01b TransportID.
    let d = &full[8..];
    assert_eq!(&d[..8], &0x11u64.to_be_bytes());
    assert_eq!((d[12], d[13]), (0x01, 0x03));
    assert_eq!(&d[18..20], &[0, 1]);
    let tid_len = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
    let (spec, used) = parse_transport_id(&d[24..24 + tid_len], 0).unwrap();
    assert_eq!((spec.as_str(), used), (&*a.initiator_port, tid_len));
    // Second: b, not a holder.
    let d2 = &d[24 + tid_len..];
    assert_eq!(&d2[..8], &0x22u64.to_be_bytes());
    assert_eq!((d2[12], d2[13]), (0, 0));
}

#[test]
fn cdb_decoding() {
    assert_eq!(
        decode_prout(&[0x5F, 0x08, 0, 0, 0, 0, 0, 0, 24, 0]),
        Err(Sense::invalid_field_in_cdb(1, Some(4)))
    );
    let c = decode_prout(&[0x5F, 0x01, 0x13, 0, 0, 0, 0, 0, 24, 0]).unwrap();
    assert_eq!((c.service_action, c.scope, c.type_code), (1, 1, 3));
    assert_eq!(
        prout_data_out_needed(&[0x5F, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
        256
    );
    for sa in 4..0x20u8 {
        assert!(decode_prin(&[0x5E, sa, 0, 0, 0, 0, 0, 0, 8, 0]).is_err());
    }
    assert_eq!(
        decode_prin(&[0x5E, 3, 0, 0, 0, 0, 0, 0x12, 0x34, 0])
            .unwrap()
            .allocation_length,
        0x1234
    );
}

#[test]
fn state_round_trips_through_toml() {
    let a = nexus("a");
    let s = register(&PrState::default(), &a, u64::MAX);
    let s = ok(run(&s, &a, prout_sa::RESERVE, WE_RO, u64::MAX, 0, 0)).state;
    let text = toml::to_string(&s).unwrap();
    let back: PrState = toml::from_str(&text).unwrap();
    assert_eq!(back, s);
}
