#!/usr/bin/env python3
"""Writes the seed corpus of keel's fuzz targets into fuzz/seeds/<target>/.

Seeds are real PDUs and commands: login requests with the key sets open-iscsi and libiscsi
send, CHAP exchanges answered correctly for the fuzz targets' deterministic challenge (every
random byte 0x11), SCSI commands, text requests, with and without digests. Each target's
input format is described at the top of its source in fuzz_targets/. Run it again after
changing a format; it overwrites the generated files and leaves other files (minimized
crash reproducers) alone.
"""

import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = "iqn.2026-11.org.example:disk0"
OPEN_ISCSI_INITIATOR = "iqn.1993-08.org.debian:01:5e3c8a1b2f"
LIBISCSI_INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"

# ---------------------------------------------------------------------------- wire helpers


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def text(pairs) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def frame(bhs: bytes, data: bytes = b"", ahs: bytes = b"", hd=False, dd=False) -> bytes:
    assert len(bhs) == 48 and len(ahs) % 4 == 0
    bhs = bytearray(bhs)
    bhs[4] = len(ahs) // 4
    bhs[5:8] = struct.pack(">I", len(data))[1:]
    head = bytes(bhs) + ahs
    out = head
    if hd:
        out += struct.pack("<I", crc32c(head))
    if data:
        out += pad(data)
        if dd:
            out += struct.pack("<I", crc32c(pad(data)))
    return out


ISID_OPEN = bytes([0x00, 0x02, 0x3D, 0x00, 0x00, 0x01])
ISID_LIBISCSI = bytes([0x80, 0x12, 0x34, 0x56, 0x00, 0x01])


def login(csg, nsg, transit, pairs, isid=ISID_OPEN, itt=0, cmd_sn=1, cont=False, tsih=0):
    flags = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | nsg
    bhs = struct.pack(
        ">BBBBI6sHIHHII16s", 0x43, flags, 0, 0, 0, isid, tsih, itt, 0, 0, cmd_sn, 0, b""
    )
    return frame(bhs, pairs if isinstance(pairs, bytes) else text(pairs))


def text_request(pairs, itt=1, cmd_sn=1, ttt=0xFFFFFFFF, final=True, **kw):
    bhs = struct.pack(
        ">BBHI8sIIII16s", 0x44, 0x80 if final else 0, 0, 0, b"", itt, ttt, cmd_sn, 1, b""
    )
    return frame(bhs, text(pairs), **kw)


def nop_out(itt=2, cmd_sn=1, data=b"", **kw):
    bhs = struct.pack(">BBHI8sIIII16s", 0x40, 0x80, 0, 0, b"", itt, 0xFFFFFFFF, cmd_sn, 1, b"")
    return frame(bhs, data, **kw)


def scsi_command(cdb, itt, cmd_sn, read=False, write=False, length=0, data=b"", ahs=b"", final=True, **kw):
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 0x01
    base = cdb[:16].ljust(16, b"\0")
    bhs = struct.pack(">BBHI8sIIII", 0x01, flags, 0, 0, b"", itt, length, cmd_sn, 1) + base
    return frame(bhs, data, ahs=ahs, **kw)


def data_out(itt, ttt, data_sn, offset, data, final=True, **kw):
    bhs = struct.pack(
        ">BBHI8sIIIIIIII", 0x05, 0x80 if final else 0, 0, 0, b"", itt, ttt, 0, 1, 0, data_sn,
        offset, 0,
    )
    return frame(bhs, data, **kw)


def task_mgmt(function, itt, cmd_sn, ref=0xFFFFFFFF, **kw):
    bhs = struct.pack(
        ">BBHI8sIIIIII8s", 0x42, 0x80 | function, 0, 0, b"", itt, ref, cmd_sn, 1, 0, 0, b""
    )
    return frame(bhs, **kw)


def logout(itt, cmd_sn, reason=0, **kw):
    bhs = struct.pack(">BBHI8sIHHII16s", 0x46, 0x80 | reason, 0, 0, b"", itt, 0, 0, cmd_sn, 1, b"")
    return frame(bhs, **kw)


def snack(itt, **kw):
    bhs = struct.pack(">BBHI8sIIIIIIII", 0x10, 0x80, 0, 0, b"", itt, 0xFFFFFFFF, 0, 1, 0, 0, 0, 0)
    return frame(bhs, **kw)


# ---------------------------------------------------------------------------- key sets

OPEN_ISCSI_SECURITY = [
    ("InitiatorName", OPEN_ISCSI_INITIATOR),
    ("InitiatorAlias", "debian"),
    ("TargetName", TARGET),
    ("SessionType", "Normal"),
    ("AuthMethod", "None"),
]
OPEN_ISCSI_OPERATIONAL = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("ErrorRecoveryLevel", "0"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("MaxRecvDataSegmentLength", "262144"),
]
LIBISCSI_FIRST = [
    ("InitiatorName", LIBISCSI_INITIATOR),
    ("InitiatorAlias", "iscsi-test"),
    ("TargetName", TARGET),
    ("SessionType", "Normal"),
    ("HeaderDigest", "None,CRC32C"),
    ("DataDigest", "None,CRC32C"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
    ("ErrorRecoveryLevel", "0"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("MaxRecvDataSegmentLength", "262144"),
]
DIGESTS_ON = [(k, "CRC32C,None" if k.endswith("Digest") else v) for k, v in OPEN_ISCSI_OPERATIONAL]
DISCOVERY = [
    ("InitiatorName", OPEN_ISCSI_INITIATOR),
    ("SessionType", "Discovery"),
    ("AuthMethod", "None"),
]

# ---------------------------------------------------------------------------- CHAP

CHAP_ID = 0x11
ALGS = {5: (hashlib.md5, 16), 6: (hashlib.sha1, 20), 7: (hashlib.sha256, 32), 8: (hashlib.sha3_256, 32)}
USERS = {"alice": b"alice-secret-123", "bob": b"bob-secret-4567890"}


def chap_response(alg, secret, ident=CHAP_ID, challenge=None):
    h, n = ALGS[alg]
    challenge = challenge if challenge is not None else bytes([0x11]) * max(n, 16)
    return "0x" + h(bytes([ident]) + secret + challenge).hexdigest()


def chap_login(alg, user="alice", mutual=False, session=None, isid=ISID_OPEN, name=OPEN_ISCSI_INITIATOR):
    first = session or [
        ("InitiatorName", name),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP,None"),
    ]
    answer = [("CHAP_N", user), ("CHAP_R", chap_response(alg, USERS[user]))]
    if mutual:
        answer += [("CHAP_I", "34"), ("CHAP_C", "0x" + "5a" * 16)]
    return (
        login(0, 1, True, first, isid=isid)
        + login(0, 1, False, [("CHAP_A", f"{alg},7,6,5")], isid=isid)
        + login(0, 1, True, answer, isid=isid)
        + login(1, 3, True, OPEN_ISCSI_OPERATIONAL, isid=isid)
    )


# ---------------------------------------------------------------------------- seeds


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def cdb16(*b):
    return bytes(b).ljust(16, b"\0")


READ10 = cdb16(0x28, 0, 0, 0, 0, 8, 0, 0, 8)
WRITE10 = cdb16(0x2A, 0, 0, 0, 0, 16, 0, 0, 1)
INQUIRY = cdb16(0x12, 0, 0, 0, 96)
EXTENDED_CDB_AHS = struct.pack(">HBB", 17, 1, 0) + bytes(range(16))
BIDI_AHS = struct.pack(">HBBI", 5, 2, 0, 4096)


def framing_seeds():
    # cfg byte: bit 0 header digest, bit 1 data digest, bits 2-3 segment limit (0 login,
    # 1: 512, 2: 262144, 3: the next three bytes), high nibble chunk size - 1.
    login_stream = login(0, 1, True, OPEN_ISCSI_SECURITY) + login(1, 3, True, OPEN_ISCSI_OPERATIONAL)
    write(target="framing", name="login-open-iscsi", data=bytes([0x00, 0, 0, 0]) + login_stream)
    write("framing", "login-libiscsi", bytes([0x30, 0, 0, 0]) + login(1, 3, True, LIBISCSI_FIRST, isid=ISID_LIBISCSI))
    write("framing", "discovery-sendtargets", bytes([0x00, 0, 0, 0]) + login(0, 3, True, DISCOVERY) + text_request([("SendTargets", "All")]))

    def session(hd, dd):
        return (
            scsi_command(INQUIRY, 1, 1, read=True, length=96, hd=hd, dd=dd)
            + scsi_command(READ10, 2, 2, read=True, length=4096, hd=hd, dd=dd)
            + scsi_command(WRITE10, 3, 3, write=True, length=512, data=bytes(range(256)) * 2, hd=hd, dd=dd)
            + scsi_command(cdb16(0x2A, 0, 0, 0, 0, 32, 0, 0, 2), 4, 4, write=True, length=1024, hd=hd, dd=dd)
            + data_out(4, 0x10, 0, 0, b"\xab" * 512, final=False, hd=hd, dd=dd)
            + data_out(4, 0x10, 1, 512, b"\xcd" * 512, hd=hd, dd=dd)
            + nop_out(5, 5, b"ping", hd=hd, dd=dd)
            + text_request([("SendTargets", "All")], itt=6, cmd_sn=6, hd=hd, dd=dd)
            + task_mgmt(1, 7, 7, ref=2, hd=hd, dd=dd)
            + snack(8, hd=hd, dd=dd)
            + logout(9, 8, hd=hd, dd=dd)
        )

    write("framing", "session-plain", bytes([0x08, 0, 0, 0]) + session(False, False))
    write("framing", "session-digests", bytes([0x0B, 0, 0, 0]) + session(True, True))
    write("framing", "session-header-digest-bytewise", bytes([0x09, 0, 0, 0]) + session(True, False))
    write("framing", "session-data-digest-chunked", bytes([0x7A, 0, 0, 0]) + session(False, True))
    ahs_cmd = scsi_command(INQUIRY, 11, 1, read=True, write=True, length=96, ahs=EXTENDED_CDB_AHS + BIDI_AHS, data=b"x" * 12)
    write("framing", "extended-cdb-bidi", bytes([0x0C, 0x00, 0x02, 0x00]) + ahs_cmd)
    write("framing", "extended-cdb-bidi-digests", bytes([0x0F, 0x00, 0x10, 0x00]) + scsi_command(INQUIRY, 11, 1, read=True, ahs=EXTENDED_CDB_AHS, hd=True, dd=True))
    bad = bytearray(nop_out(1, 1, b"hello", hd=True, dd=True))
    bad[10] ^= 1
    write("framing", "bad-header-digest", bytes([0x03, 0, 0, 0]) + bytes(bad))
    bad = bytearray(nop_out(1, 1, b"hello", hd=True, dd=True))
    bad[-1] ^= 1
    write("framing", "bad-data-digest", bytes([0x03, 0, 0, 0]) + bytes(bad))
    over = bytearray(nop_out(1, 1))
    over[5:8] = b"\xff\xff\xff"
    write("framing", "oversized-segment", bytes([0x04, 0, 0, 0]) + bytes(over))


def text_seeds():
    # cfg: bits 0-1 settings, bit 2 discovery, high nibble continuation cut; byte 1 segment/64.
    write("text_keys", "open-iscsi-security", bytes([0x00, 0x08]) + text(OPEN_ISCSI_SECURITY))
    write("text_keys", "open-iscsi-operational", bytes([0x10, 0x10]) + text(OPEN_ISCSI_OPERATIONAL))
    write("text_keys", "libiscsi-first", bytes([0x21, 0x00]) + text(LIBISCSI_FIRST))
    write("text_keys", "digests-hex-numbers", bytes([0x02, 0x80]) + text(DIGESTS_ON + [("MaxBurstLength", "0x10000"), ("FirstBurstLength", "0X200")]))
    write("text_keys", "discovery", bytes([0x04, 0x01]) + text(DISCOVERY + OPEN_ISCSI_OPERATIONAL))
    write("text_keys", "sendtargets", bytes([0x30, 0x02]) + text([("SendTargets", "All")]))
    write("text_keys", "chap", bytes([0x00, 0x04]) + text([
        ("AuthMethod", "CHAP,None"), ("CHAP_A", "8,7,6,5"), ("CHAP_I", "0x11"),
        ("CHAP_C", "0b" + "ERERERERERERERERERERER=="), ("CHAP_N", "alice"),
        ("CHAP_R", chap_response(5, USERS["alice"])),
    ]))
    write("text_keys", "rfc3720-and-junk", bytes([0x51, 0x00]) + text([
        ("OFMarkInt", "2048~8192"), ("IFMarkInt", "2048~8192"), ("RDMAExtensions", "Yes"),
        ("TaskReporting", "FastAbort"), ("X-com.example.vendor", "1"), ("MaxConnections", "0"),
        ("ErrorRecoveryLevel", "2"), ("ImmediateData", "maybe"), ("DataDigest", "MD5"),
    ]) + b"Bad\0=x\0")


def login_seeds():
    # cfg: bits 0-1 target CHAP (0 none, 1 one-way, 2 mutual), bit 2 discovery CHAP, bit 3
    # allow list (iqn.1993-08.org.debian:*), bits 4-5 algorithms (0 all, 1 MD5, 2 SHA-256
    # and SHA3-256, 3 SHA-1), bit 6 failing random source.
    write("login", "open-iscsi-two-stages", b"\x00" + login(0, 1, True, OPEN_ISCSI_SECURITY) + login(1, 3, True, OPEN_ISCSI_OPERATIONAL))
    write("login", "libiscsi-operational-first", b"\x08" + login(1, 3, True, LIBISCSI_FIRST, isid=ISID_LIBISCSI))
    write("login", "discovery", b"\x00" + login(0, 3, True, DISCOVERY))
    write("login", "discovery-chap", b"\x04" + chap_login(5, session=[("InitiatorName", OPEN_ISCSI_INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "CHAP")]))
    full = text(OPEN_ISCSI_SECURITY + OPEN_ISCSI_OPERATIONAL)
    write("login", "continued-text", b"\x00" + login(0, 3, False, full[:100], cont=True) + login(0, 3, True, full[100:]))
    write("login", "stay-in-security", b"\x00" + login(0, 1, False, OPEN_ISCSI_SECURITY) + login(0, 1, True, []) + login(1, 3, True, DIGESTS_ON))
    write("login", "chap-md5", b"\x01" + chap_login(5))
    write("login", "chap-sha1", b"\x31" + chap_login(6, user="bob"))
    write("login", "chap-sha256", b"\x21" + chap_login(7))
    write("login", "chap-sha3", b"\x01" + chap_login(8))
    write("login", "chap-mutual", b"\x02" + chap_login(5, mutual=True))
    write("login", "chap-mutual-allow-list", b"\x0a" + chap_login(7, mutual=True))
    write("login", "chap-skipped", b"\x01" + login(1, 3, True, LIBISCSI_FIRST))
    write("login", "chap-wrong-secret", b"\x01" + login(0, 1, True, OPEN_ISCSI_SECURITY[:4] + [("AuthMethod", "CHAP")]) + login(0, 1, False, [("CHAP_A", "5")]) + login(0, 1, True, [("CHAP_N", "alice"), ("CHAP_R", "0x" + "00" * 16)]))
    write("login", "not-allowed", b"\x08" + login(0, 3, True, [("InitiatorName", "iqn.2004-10.com.ubuntu:01:x"), ("TargetName", TARGET)]))


def command(nexus, lun, cdb, data=b"", expected=0, attr=0):
    assert 6 <= len(cdb) <= 260
    head = bytes([(attr << 4) | (lun << 2) | nexus, len(cdb) - 6])
    return head + struct.pack(">H", len(data)) + struct.pack(">I", expected)[1:] + cdb + data


def event(nexus, lun, kind):
    return bytes([0x80 | (lun << 2) | nexus, kind, 0, 0, 0, 0, 0])


def pr_out(sa, key, sa_key, type_=0, aptpl=0):
    cdb = cdb16(0x5F, sa, type_, 0, 0, 0, 0, 0, 24)[:10]
    params = struct.pack(">QQ", key, sa_key) + bytes([0, 0, 0, 0, aptpl, 0, 0, 0])
    return cdb, params


def cdb_seeds():
    tur = cdb16(0x00)
    ua_clear = command(0, 0, cdb16(0x03, 0, 0, 0, 252), expected=252)
    write("cdb", "inquiry-and-vpd", b"".join([
        command(0, 0, INQUIRY, expected=96),
        command(0, 0, cdb16(0x12, 1, 0x00, 0, 255), expected=255),
        command(0, 0, cdb16(0x12, 1, 0x83, 0, 255), expected=255),
        command(0, 1, cdb16(0x12, 1, 0xB0, 0, 64), expected=64),
        command(0, 1, cdb16(0x12, 1, 0xB2, 0, 8), expected=8),
        command(1, 3, INQUIRY, expected=96),
        command(1, 3, cdb16(0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0), expected=256),
    ]))
    write("cdb", "capacity-and-io", b"".join([
        ua_clear,
        command(0, 0, tur),
        command(0, 0, cdb16(0x25), expected=8),
        command(0, 1, cdb16(0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32), expected=32),
        command(0, 0, WRITE10, data=bytes(range(256)) * 2, expected=0),
        command(0, 0, READ10, expected=4096),
        command(0, 1, cdb16(0x8A, 0x08, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1), data=b"\x5a" * 4096),
        command(0, 1, cdb16(0x88, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1), expected=4096),
        command(0, 2, cdb16(0x0A, 0, 0, 1, 1, 0), data=b"\x01" * 512),
        command(0, 0, cdb16(0x08, 0, 0, 1, 2, 0), expected=1024),
        command(0, 0, cdb16(0x35)),
    ]))
    mode_select_caching = bytes([0, 0, 0, 0]) + bytes([0x08, 0x12, 0x00]) + bytes(17)
    mode_select_control = bytes([0, 0, 0, 0]) + bytes([0x0A, 0x0A, 0x04]) + bytes(9)
    write("cdb", "mode-pages", b"".join([
        ua_clear,
        command(0, 0, cdb16(0x1A, 0, 0x3F, 0, 255), expected=255),
        command(0, 0, cdb16(0x5A, 0, 0x3F, 0, 0, 0, 0, 0x10, 0), expected=4096),
        command(0, 0, cdb16(0x1A, 0, 0x48, 0, 64), expected=64),
        command(0, 0, cdb16(0x15, 0x11, 0, 0, len(mode_select_caching)), data=mode_select_caching),
        command(0, 0, cdb16(0x15, 0x11, 0, 0, len(mode_select_control)), data=mode_select_control),
        command(1, 0, cdb16(0x28, 0, 0, 0, 0, 0, 0, 0, 1), expected=512),
        command(0, 0, cdb16(0x4D, 0, 0x40, 0, 0, 0, 0, 1, 0), expected=256),
        command(0, 0, cdb16(0x37, 0, 0x18, 0, 0, 0, 0, 0, 8), expected=8),
    ]))
    reg_cdb, reg = pr_out(0x00, 0, 0xABCD)
    res_cdb, res = pr_out(0x01, 0xABCD, 0, type_=0x01)
    reg2_cdb, reg2 = pr_out(0x00, 0, 0x1234)
    pre_cdb, pre = pr_out(0x04, 0x1234, 0xABCD, type_=0x01)
    write("cdb", "persistent-reservations", b"".join([
        ua_clear,
        command(1, 0, cdb16(0x03, 0, 0, 0, 252), expected=252),
        command(0, 0, reg_cdb, reg),
        command(0, 0, res_cdb, res),
        command(1, 0, WRITE10, data=b"\x00" * 512),
        command(1, 0, cdb16(0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0), expected=4096),
        command(1, 0, cdb16(0x5E, 0x01, 0, 0, 0, 0, 0, 0x10, 0), expected=4096),
        command(1, 0, reg2_cdb, reg2),
        command(1, 0, pre_cdb, pre),
        command(0, 0, cdb16(0x5E, 0x02, 0, 0, 0, 0, 0, 0x10, 0), expected=4096),
        event(1, 0, 0),
        command(0, 0, cdb16(0x5E, 0x03, 0, 0, 0, 0, 0, 0x10, 0), expected=4096),
    ]))
    write("cdb", "spc2-reserve", b"".join([
        command(0, 0, cdb16(0x16)),
        command(1, 0, cdb16(0x28, 0, 0, 0, 0, 0, 0, 0, 1), expected=512),
        command(1, 0, cdb16(0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
        event(0, 0, 2),
        command(1, 0, cdb16(0x56)[:10]),
        command(1, 0, cdb16(0x57)[:10]),
        command(0, 0, cdb16(0x17)),
    ]))
    unmap = struct.pack(">HH4s", 22, 16, b"") + struct.pack(">QI4s", 8, 8, b"")
    write("cdb", "thin-and-offload", b"".join([
        ua_clear,
        command(0, 0, cdb16(0x2A, 0, 0, 0, 0, 8, 0, 0, 8), data=b"\x77" * 4096),
        command(0, 0, cdb16(0x42, 0, 0, 0, 0, 0, 0, 0, len(unmap))[:10], data=unmap),
        command(0, 0, cdb16(0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0), expected=4096),
        command(0, 0, cdb16(0x41, 0x08, 0, 0, 0, 32, 0, 0, 8)[:10], data=b"\x00" * 512),
        command(0, 0, cdb16(0x93, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 4), data=b"\x42" * 512),
        command(0, 0, cdb16(0x89, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 1), data=b"\x42" * 512 + b"\x43" * 512),
        command(0, 0, cdb16(0x2F, 0x02, 0, 0, 0, 64, 0, 0, 1)[:10], data=b"\x43" * 512),
        command(0, 0, cdb16(0x8B, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 1), data=b"\x01" * 512),
        command(0, 0, cdb16(0x34, 0, 0, 0, 0, 0, 0, 0, 8)[:10]),
    ]))
    write("cdb", "maintenance-and-copy", b"".join([
        ua_clear,
        command(0, 0, cdb16(0xA3, 0x0C, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0), expected=65536),
        command(0, 0, cdb16(0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0), expected=256),
        command(0, 0, cdb16(0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0), expected=16),
        command(0, 0, cdb16(0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0), expected=256),
        command(0, 0, cdb16(0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0), expected=256),
        command(0, 0, cdb16(0x84, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0), expected=256),
        event(2, 0, 1),
        command(2, 0, cdb16(0x03, 0, 0, 0, 252), expected=252),
    ]))


def session_seeds():
    # Input: a config byte, a shape byte, then events: 0x00 + a framed PDU, 0x80|n complete
    # running command n, 0xa0|n start it, 0xc0|s advance s seconds, 0xe0 grant write-buffer
    # memory, 0xf0 end (see fuzz_targets/session.rs). Target transfer tags count from 1.
    def pdu(frame_bytes):
        return b"\0" + frame_bytes

    def seed(name, config, shape, *events):
        write("session", name, bytes([config, shape]) + b"".join(events))

    write16 = cdb16(0x2A, 0, 0, 0, 0, 16, 0, 0, 16)
    send_targets = [("SendTargets", "All")]
    seed("basic", 0x04, 0x07,
         pdu(scsi_command(READ10, 0x10, 1, read=True, length=4096)), b"\x80",
         pdu(nop_out(0x11, 2, b"ping")),
         pdu(text_request(send_targets, itt=0x12, cmd_sn=3)),
         pdu(logout(0x13, 4)))
    seed("r2t", 0x06, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192)),
         pdu(data_out(0x10, 1, 0, 0, b"\xaa" * 8192)), b"\x80")
    seed("r2t-bursts", 0x1e | 0x80, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192)),
         pdu(data_out(0x10, 1, 0, 0, b"\x01" * 4096)),
         pdu(data_out(0x10, 2, 0, 4096, b"\x02" * 4096)), b"\x80")
    seed("unsolicited", 0x04, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192, data=b"\x05" * 1024,
                          final=False)),
         pdu(data_out(0x10, 0xFFFFFFFF, 0, 1024, b"\x06" * 3072)),
         pdu(data_out(0x10, 1, 0, 4096, b"\x07" * 4096)), b"\x80")
    seed("wrong-data-sn", 0x06, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192)),
         pdu(data_out(0x10, 1, 3, 0, b"\xaa" * 8192)), b"\x80")
    seed("out-of-order-offset", 0x06, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192)),
         pdu(data_out(0x10, 1, 0, 512, b"\xaa" * 4096)))
    bad = bytearray(data_out(0x10, 1, 0, 0, b"\xaa" * 8192, dd=True))
    bad[-1] ^= 0xFF
    seed("data-digest", 0x26, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192, dd=True)),
         pdu(bytes(bad)), b"\x80", pdu(nop_out(0x11, 2, b"x", dd=True)))
    seed("cmd-sn-gap", 0x04, 0x07,
         pdu(nop_out(0x11, 3)), pdu(scsi_command(READ10, 0x12, 2, read=True, length=4096)),
         pdu(nop_out(0x13, 1)), b"\x80",
         pdu(task_mgmt(1, 0x14, 5, ref=0x99)), pdu(nop_out(0x15, 5)))
    seed("task-management", 0x06, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=8192)),
         pdu(scsi_command(READ10, 0x11, 2, read=True, length=4096)), b"\xa0",
         pdu(task_mgmt(1, 0x12, 3, ref=0x10)),
         pdu(task_mgmt(5, 0x13, 3)), b"\x80",
         pdu(task_mgmt(2, 0x14, 3)), pdu(task_mgmt(7, 0x15, 3)))
    seed("ping", 0x04, 0x07, b"\xc5", b"\xc3")
    seed("budget", 0x46, 0x07,
         pdu(scsi_command(write16, 0x10, 1, write=True, length=16384)), b"\xe0",
         pdu(data_out(0x10, 1, 0, 0, b"\x09" * 8192, final=False)),
         pdu(data_out(0x10, 1, 1, 8192, b"\x09" * 8192)), b"\x80")
    seed("discovery", 0x01, 0x07,
         pdu(text_request(send_targets, itt=0x12, cmd_sn=1)),
         pdu(scsi_command(READ10, 0x10, 2, read=True, length=4096)),
         pdu(snack(0x13)), pdu(logout(0x14, 3)))
    seed("wrap", 0x04, 0xF3,
         pdu(scsi_command(READ10, 0x10, 0xFFFFFFFD, read=True, length=4096)),
         pdu(nop_out(0x11, 0xFFFFFFFE)), pdu(nop_out(0x12, 0xFFFFFFFF)),
         pdu(nop_out(0x13, 0)), b"\x80")


def control_seeds():
    # Input: one request line of the control protocol (see fuzz_targets/control_request.rs).
    lines = {
        "status": b'{"v":1,"id":1,"cmd":"status"}\n',
        "reload": b'{"v":1,"cmd":"reload"}',
        "target-add": b'{"v":1,"id":2,"cmd":"target.add","target":{"name":"' + TARGET.encode()
        + b'","alias":"a","allowed_initiators":["' + OPEN_ISCSI_INITIATOR.encode()
        + b'"],"chap":[{"user":"u","secret":"0123456789ab"}],'
        b'"lun":[{"lun":0,"file":"a.img","size":"1GiB","read_only":false}]}}\n',
        "target-remove": b'{"v":1,"id":3,"cmd":"target.remove","name":"' + TARGET.encode() + b'"}',
        "lun-add": b'{"v":1,"cmd":"lun.add","target":"t","lun":{"lun":1,"file":"b.img","size":1048576,"block_size":4096}}',
        "lun-remove": b'{"v":1,"cmd":"lun.remove","target":"t","lun":1}',
        "lun-resize": b'{"v":1,"id":18446744073709551615,"cmd":"lun.resize","target":"t","lun":0,"size":"2GiB"}',
        "session-list": b'{"v":1,"cmd":"session.list","target":"t"}',
        "session-logout": b'{"v":1,"cmd":"session.logout","initiator":"' + OPEN_ISCSI_INITIATOR.encode()
        + b'","tsih":7,"portal":"[::1]:3260"}',
        "bad-version": b'{"v":2,"id":4,"cmd":"status"}',
        "duplicate-key": b'{"v":1,"cmd":"status","cmd":"reload"}',
        "nested": b'{"v":1,"cmd":"target.add","target":{"a":[[[{"b":[1.5e300,-0.0,null]}]]]}}',
    }
    for name, line in lines.items():
        write("control_request", name, line)


def main():
    control_seeds()
    framing_seeds()
    text_seeds()
    login_seeds()
    cdb_seeds()
    session_seeds()
    for t in sorted(os.listdir(os.path.join(HERE, "seeds"))):
        d = os.path.join(HERE, "seeds", t)
        files = os.listdir(d)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
