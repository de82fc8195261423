#!/usr/bin/env python3
"""Turns iscsi-test-cu -V logs into a per-test PASS/FAIL/SKIP matrix.

A test is FAIL when CUnit fails it or when the tool printed a "[FAILED]" diagnostic while it
ran (the tool logs some failed checks without failing the test); SKIP when it printed
"[SKIPPED]" (CUnit counts those as passed); PASS otherwise. A test runs until CUnit prints its
verdict ("passed"/"FAILED"); what follows before the next test is the suite's own set-up or
clean-up, whose "[FAILED]" lines are listed separately, never dropped.

Four tests are judged differently, and the table says so. iSCSIdatasn.iSCSIDataSnInvalid sends four
WRITE10s with a spoiled DataSN through the tool's write helper called with EXPECT_STATUS_GOOD,
then asserts that each one did NOT succeed (CU_ASSERT_NOT_EQUAL(ret, 0)). The helper prints
"[FAILED] WRITE10 command failed ..." whenever a command is not GOOD, so the literal rule counts
every target that refuses the bad data as FAIL (tgt too). For that test exactly those four
lines are the failures the test asserts; any other "[FAILED]" line, a different count, or a
CUnit failure still makes it FAIL. PreventAllow.{WarmReset,ColdReset,LUNReset} reset the target
or LU and then loop "while (testunitready(sd, EXPECT_STATUS_GOOD) != 0);" to wait until the
reset's unit attentions clear: each unit attention met there prints "[FAILED] TESTUNITREADY
...", so there only TEST UNIT READY lines answered with a reset unit attention (29/xx), one to
three of them, count as the loop doing its job. See EXPECTED_DIAGNOSTICS.

Two tests skip only a part of themselves: Sanitize.Readonly and Sanitize.Reservations check
SANITIZE OVERWRITE, BLOCK ERASE and CRYPTOGRAPHIC ERASE in turn, each only if REPORT SUPPORTED
OPERATION CODES lists it, and print "[SKIPPED]" for one that is not listed. keel offers no
CRYPTOGRAPHIC ERASE, so there a "[SKIPPED]" line for that part alone, with the rest run and
passed, is a PASS (marked, with the source line). See PARTIAL_SKIPS.

One test cannot be judged in a run with two portals: Sanitize.Reservations takes a RESERVE(6)
on the second session and never releases it, and with two portals that session is the
multipath one, which stays logged in (mpath_sd2_put returns without a logout), so the next
test, Sanitize.Reset, meets RESERVATION CONFLICT, which Reservations has just asserted is
right. There, and only when its "[FAILED]" lines are exactly those of commands answered
without sense data, it is SKIP with that reason; the script runs the Sanitize suite again with
one portal (a cloned second session, logged out after each test), where it must PASS. See
SUITE_LEFTOVERS.

usage: conformance-table.py OUT.md keel.log [tgt.log] [--extra "TITLE=keel-run.log" ...]
(--extra: a run of some tests against another kind of LU, tabled separately; any test in it
that FAILs, or SKIPs without a reason recorded in SKIP_REASONS, fails the whole.)
Prints a one-line summary per target; exits 1 if keel has any FAIL.
"""
import re
import sys

# Tests whose own assertions make the tool print "[FAILED]" for a correct target:
# test -> (pattern every such line must match, fewest and most such lines, why).
RESET_UA = (
    r"TESTUNITREADY command failed with status (0x)?2 / sense key UNIT_ATTENTION\(0x06\) / "
    r"ASCQ \S+\(0x29[0-9a-f]{2}\)"
)
RESET_WHY = (
    "the test's own loop 'wait until all unit attentions clear' (TEST UNIT READY until GOOD) "
    "met the reset's unit attention 29/xx, which SAM-5 gives every I_T nexus, the resetting one too"
)
EXPECTED_DIAGNOSTICS = {
    "iSCSIdatasn.iSCSIDataSnInvalid": (
        r"WRITE10 command failed with status",
        4,
        4,
        "4 WRITE10s with a bad DataSN refused, as the test asserts (its helper prints [FAILED] for them)",
    ),
    "PreventAllow.WarmReset": (RESET_UA, 1, 3, RESET_WHY),
    "PreventAllow.ColdReset": (RESET_UA, 1, 3, RESET_WHY),
    "PreventAllow.LUNReset": (RESET_UA, 1, 3, RESET_WHY),
}

# libiscsi's tests skip a SANITIZE service action that REPORT SUPPORTED OPERATION CODES does
# not list; keel lists no CRYPTOGRAPHIC ERASE (it keeps no media encryption key to destroy).
# Line numbers are those of libiscsi 1.19.0, the iscsi-test-cu installed here.
CRYPTO_ERASE_NOT_OFFERED = (
    "keel deliberately offers no CRYPTOGRAPHIC ERASE (no media encryption key to destroy; it "
    "answers ILLEGAL REQUEST, INVALID FIELD IN CDB at the service action and does not list it)"
)
# Tests that skip one part and run the rest: test -> (pattern every [SKIPPED] line must match,
# why it is a PASS).
PARTIAL_SKIPS = {
    "Sanitize.Readonly": (
        r"SANITIZE CRYPTO_ERASE is not implemented",
        "OVERWRITE and BLOCK ERASE refused with WRITE PROTECTED as the test asserts; its "
        "CRYPTOGRAPHIC ERASE part skipped: " + CRYPTO_ERASE_NOT_OFFERED
        + ", test_sanitize_readonly.c line 111: `if (cd == NULL) {`",
    ),
    "Sanitize.Reservations": (
        r"SANITIZE CRYPTO_ERASE is not implemented",
        "OVERWRITE and BLOCK ERASE refused with RESERVATION CONFLICT as the test asserts; its "
        "CRYPTOGRAPHIC ERASE part skipped: " + CRYPTO_ERASE_NOT_OFFERED
        + ", test_sanitize_reservations.c line 102: `if (cd == NULL) {`",
    ),
}

# Tests that a test before them in the same run leaves unable to run: test -> (pattern every
# "[FAILED]" line must match, fewest and most such lines, why).
SUITE_LEFTOVERS = {
    "Sanitize.Reset": (
        r"(TESTUNITREADY|STARTSTOPUNIT|READ16) (failed with wrong sense\. Should have failed with "
        r"NOT READY\(0x02\)/SANITIZE_IN_PROGRESS\(0x041b\) but failed with Sense: \(null\)\(0x00\)/\(0x0000\)"
        r"|successful but should have failed with NOT READY\(0x02\)/SANITIZE_IN_PROGRESS\(0x041b\))",
        1,
        4,
        "not judged in the two-portal run: Sanitize.Reservations (test_sanitize_reservations.c line 60, "
        "RESERVE6(sd2)) leaves the multipath second session's RESERVE(6) in place (iscsi-multipath.c "
        "line 433: mpath_sd2_put returns without a logout), so Reset's SANITIZE and commands get "
        "RESERVATION CONFLICT (no sense data) until its own resets release it; run alone with one "
        "portal in the Sanitize run below, it passes",
    ),
}

# Why keel skips what it skips: (test name prefix, reason). Every SKIP must have one.
SKIP_REASONS = [
    (
        "Sanitize.CryptoErase",
        CRYPTO_ERASE_NOT_OFFERED + "; test_sanitize_crypto_erase.c line 137: `if (cd == NULL) {`",
    ),
    ("Sanitize.Reset", SUITE_LEFTOVERS["Sanitize.Reset"][3]),
    ("ReadOnly.", "needs a write-protected LU; this run's LU is writable: see the read-only run below"),
] + [
    (name, "needs more than one logical block per physical block: see the run with 4 KiB physical blocks below")
    for name in (
        "CompareAndWrite.InvalidDataOutSize",
        "WriteSame10.UnmapUnaligned",
        "WriteSame10.InvalidDataOutSize",
        "WriteSame16.UnmapUnaligned",
        "WriteSame16.InvalidDataOutSize",
    )
] + [
    ("WriteAtomic16.VPD", "checks misaligned atomic writes, which only exist when atomic writes must align to more than one block, as on a LUN with 4 KiB physical blocks: see that run below"),
]


def skip_reason(name):
    return next((r for prefix, r in SKIP_REASONS if name.startswith(prefix)), None)


def parse(path):
    results = {}
    order = []
    outside = []
    suite = None
    current = None
    lines = []

    def close():
        if current is None:
            return
        text = "\n".join(lines)
        verdict = re.search(r"^(passed|FAILED)", text, re.M)
        body = text[: verdict.end()] if verdict else text
        after = text[verdict.end():] if verdict else ""
        for diag in re.findall(r"\[FAILED\]\s*(.*)", after):
            outside.append((current, diag.strip()))
        cunit_failed = re.search(r"^\s*FAILED\s*$|\.\.\.\s*FAILED|^FAILED", body, re.M)
        diagnostics = re.findall(r"\[FAILED\]\s*(.*)", body)
        failed = cunit_failed or diagnostics
        skipped = re.search(r"\[SKIPPED\]\s*(.*)", body)
        expected = EXPECTED_DIAGNOSTICS.get(current)
        partial = PARTIAL_SKIPS.get(current)
        leftover = SUITE_LEFTOVERS.get(current)
        skip_lines = re.findall(r"\[SKIPPED\]\s*(.*)", body)
        if (
            partial
            and not failed
            and skip_lines
            and all(re.match(partial[0], line) for line in skip_lines)
        ):
            results[current] = ("PASS", "part skipped: " + partial[1])
        elif (
            leftover
            and not skipped
            and leftover[1] <= len(diagnostics) <= leftover[2]
            and all(re.match(leftover[0], d) for d in diagnostics)
        ):
            results[current] = ("SKIP", "the test's commands were answered RESERVATION CONFLICT")
        elif (
            expected
            and not cunit_failed
            and not skipped
            and expected[1] <= len(diagnostics) <= expected[2]
            and all(re.match(expected[0], d) for d in diagnostics)
        ):
            results[current] = ("PASS", "expected diagnostics: " + expected[3])
        elif failed:
            why = re.search(r"\[FAILED\]\s*(.*)", body) or re.search(r"^\s*1\. (.*)$", body, re.M)
            results[current] = ("FAIL", why.group(1).strip() if why else "")
        elif skipped:
            results[current] = ("SKIP", skipped.group(1).strip())
        else:
            results[current] = ("PASS", "")
        order.append(current)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^Suite: (\S+)", line)
            if m:
                close()
                current, lines = None, []
                suite = m.group(1)
                continue
            m = re.match(r"^  Test: (\S+) \.\.\.(.*)$", line)
            if m:
                close()
                current = f"{suite}.{m.group(1)}"
                lines = [m.group(2)]
                continue
            if line.startswith("Run Summary"):
                close()
                current, lines = None, []
                continue
            if current is not None:
                lines.append(line)
    close()
    return order, results, outside


def main():
    args = sys.argv[1:]
    extras = []
    while "--extra" in args:
        i = args.index("--extra")
        title, _, log = args[i + 1].rpartition("=")
        extras.append((title, log))
        del args[i : i + 2]
    out, keel_log = args[0], args[1]
    tgt_log = args[2] if len(args) > 2 else None
    order, keel, keel_outside = parse(keel_log)
    extra_runs = [(title, *parse(log)[:2]) for title, log in extras]
    tgt = parse(tgt_log)[1] if tgt_log else {}
    counts = lambda r: {k: sum(1 for v in r.values() if v[0] == k) for k in ("PASS", "FAIL", "SKIP")}
    kc, tc = counts(keel), counts(tgt)
    rows = []
    unexplained = []
    for name in order:
        k, why = keel[name]
        t = tgt.get(name, ("-", ""))[0]
        mark = {"PASS": "PASS", "FAIL": "**FAIL**", "SKIP": "SKIP"}[k]
        if k == "PASS" and why:
            mark = "PASS †"
        if k == "SKIP":
            reason = skip_reason(name)
            if reason is None:
                unexplained.append(name)
                reason = "NO REASON RECORDED"
            why = f"{reason} (tool: {why})"
        rows.append(f"| {name} | {mark} | {t} | {why.replace('|', '/')[:600]} |")
    with open(out, "w") as f:
        f.write("# Conformance: libiscsi iscsi-test-cu\n\n")
        f.write("Generated by `interop/conformance` (do not edit by hand): `iscsi-test-cu -V -d --allow-sanitize\n")
        f.write("-t ALL` with two initiator names and two portals, against keel and against tgt on the same machine\n")
        f.write("in the same run. keel's LUN: file-backed on tmpfs, 512-byte blocks, removable medium (so the\n")
        f.write("PREVENT ALLOW, START STOP UNIT and no-medium tests run), SANITIZE OVERWRITE paced to 8 MiB/s\n")
        f.write("(`sanitize_rate`: Sanitize.Reset must still find the operation running after 3 s, five task\n")
        f.write("management functions and a new login); tgt's: its defaults. Tests that need another kind of LU\n")
        f.write("are run again against one, in the sections after the table.\n\n")
        f.write("FAIL means CUnit failed the test or the tool printed `[FAILED]` while it ran; SKIP means it printed\n")
        f.write("`[SKIPPED]` (keel's reason first, then the tool's message). Exceptions, marked †: in\n")
        f.write("`iSCSIDataSnInvalid` the tool prints `[FAILED]` for the four bad writes the test *expects* to\n")
        f.write("fail (it calls its write helper with EXPECT_STATUS_GOOD and then asserts the write did not\n")
        f.write("succeed), so there exactly those four lines count as the test's assertions. In\n")
        f.write("`PreventAllow.{WarmReset,ColdReset,LUNReset}` the test waits for the reset's unit attentions\n")
        f.write("with `while (testunitready(sd, EXPECT_STATUS_GOOD) != 0);`, which prints `[FAILED]` for each\n")
        f.write("one it meets: there one to three TEST UNIT READY lines answered with unit attention 29/xx\n")
        f.write("count as that loop. Any other line, another count or a CUnit failure is still FAIL. The\n")
        f.write("same rule is applied to tgt's column. Sanitize.Readonly and Sanitize.Reservations check OVERWRITE,\n")
        f.write("BLOCK ERASE and CRYPTOGRAPHIC ERASE in turn and skip each one REPORT SUPPORTED OPERATION CODES\n")
        f.write("does not list: with only the CRYPTOGRAPHIC ERASE part skipped and the rest passed they count as\n")
        f.write("PASS †, with the line of the test's source that skips (for tgt's column too). One CUnit failure is\n")
        f.write("shown as SKIP: Sanitize.Reset, when every `[FAILED]` line it prints is a command answered\n")
        f.write("without sense data. In this two-portal run it follows Sanitize.Reservations, whose RESERVE(6)\n")
        f.write("on the multipath second session is never released, so its commands get RESERVATION CONFLICT;\n")
        f.write("the Sanitize suite runs again with one portal below, where it must PASS.\n\n")
        f.write(f"| | PASS | FAIL | SKIP |\n|---|---|---|---|\n")
        f.write(f"| keel | {kc['PASS']} | {kc['FAIL']} | {kc['SKIP']} |\n")
        if tgt:
            f.write(f"| tgt | {tc['PASS']} | {tc['FAIL']} | {tc['SKIP']} |\n")
        f.write("\n| test | keel | tgt | keel: why not a plain PASS |\n|---|---|---|---|\n")
        f.write("\n".join(rows) + "\n")
        if keel_outside:
            f.write("\n## keel: [FAILED] lines outside any test\n\n")
            f.write("Printed by the suite's set-up or clean-up after the named test's verdict, not by a test.\n\n")
            f.write("| after test | diagnostic |\n|---|---|\n")
            for name, diag in keel_outside:
                f.write(f"| {name} | {diag.replace('|', '/')[:140]} |\n")
        for title, run_order, run in extra_runs:
            f.write(f"\n## keel, {title}\n\n")
            f.write("Run by the same script against a LUN made for them (see its comments for why).\n\n")
            f.write("| test | keel | detail |\n|---|---|---|\n")
            for name in run_order:
                k, why = run[name]
                if k == "SKIP":
                    why = f"{skip_reason(name) or 'NO REASON RECORDED'} (tool: {why})"
                elif k == "PASS" and why:
                    k = "PASS †"
                f.write(f"| {name} | {k} | {why.replace('|', '/')[:600]} |\n")
    print(f"keel: {kc['PASS']} passed, {kc['FAIL']} failed, {kc['SKIP']} skipped")
    if tgt:
        print(f"tgt:  {tc['PASS']} passed, {tc['FAIL']} failed, {tc['SKIP']} skipped")
    extra_failed = []
    for title, run_order, run in extra_runs:
        # A SKIP counts only with a recorded reason (keel deliberately does not offer it); a
        # test left unjudgeable in the main run must PASS here, where it runs on its own.
        failed = [
            n for n in run_order
            if run[n][0] == "FAIL"
            or (run[n][0] == "SKIP" and (not skip_reason(n) or n in SUITE_LEFTOVERS))
        ]
        extra_failed += failed
        skipped = sum(1 for n in run_order if run[n][0] == "SKIP" and n not in failed)
        passed = len(run_order) - len(failed) - skipped
        note = f", {skipped} skipped with a recorded reason" if skipped else ""
        print(f"keel, {title}: {passed} of {len(run_order)} passed{note}")
        if not run_order:
            extra_failed.append(f"(no test ran: {title})")
    if unexplained:
        print("keel skipped tests with no recorded reason: " + ", ".join(unexplained))
    if extra_failed:
        print("keel, not passed in the other runs: " + ", ".join(extra_failed))
    sys.exit(1 if kc["FAIL"] or unexplained or extra_failed else 0)


if __name__ == "__main__":
    main()
