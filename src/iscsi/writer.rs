//! The writer of a full-feature connection: it owns the socket's write half and StatSN,
//! takes encoded PDUs from the session and its commands, stamps StatSN, ExpCmdSN and
//! MaxCmdSN (from the shared [`CmdWindow`]) as each leaves, and sends many per system call.
//! Read data held in memory-resident files goes out with sendfile(2).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::window::CmdWindow;
use crate::wire::framing::{BufQueue, frame_parts};
use crate::wire::{self, FileSlice, OutPdu, Payload, SeqNums, StatSnUse};

/// A socket that accepts nothing for this long belongs to a dead or stuck initiator.
const WRITE_STALL: Duration = Duration::from_secs(60);

/// The piece of read data that is copied, digested and sent at a time when a data digest is
/// computed over data sent from a file: well inside a core's L2 cache.
const DIGEST_CHUNK: usize = 64 * 1024;

/// Writes PDUs as they come, many per system call, stamping StatSN, ExpCmdSN and MaxCmdSN.
pub(super) async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<OutPdu>,
    mut stat_sn: u32,
    window: Arc<CmdWindow>,
    header_digest: bool,
    data_digest: bool,
) -> std::io::Result<()> {
    const MAX_BATCH_PDUS: usize = 64;
    const MAX_BATCH_BYTES: usize = 4 << 20;
    let mut queue = BufQueue::default();
    let mut parts = Vec::with_capacity(4);
    // For data digests over read data sent from a file (see send_file_digested).
    let mut scratch = if data_digest {
        vec![0u8; DIGEST_CHUNK]
    } else {
        Vec::new()
    };
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut count = 0;
        let mut yielded = false;
        while let Some(mut pdu) = next.take() {
            let sn = SeqNums {
                stat_sn: if pdu.stat_sn == StatSnUse::Unused {
                    0
                } else {
                    stat_sn
                },
                exp_cmd_sn: window.exp_cmd_sn(),
                max_cmd_sn: window.announce(),
            };
            sn.stamp(&mut pdu.header);
            if pdu.stat_sn == StatSnUse::Advance {
                stat_sn = stat_sn.wrapping_add(1);
            }
            match &pdu.data {
                Payload::Bytes(data) => {
                    frame_parts(&pdu.header, data, header_digest, data_digest, &mut parts);
                }
                Payload::File(slice) => {
                    frame_parts(&pdu.header, &Bytes::new(), header_digest, false, &mut parts);
                    for part in parts.drain(..) {
                        queue.push(part);
                    }
                    // Everything queued goes first: the file's bytes follow their header.
                    stalled_after(WRITE_STALL, wr.write_all_buf(&mut queue)).await?;
                    let mut tail = BytesMut::with_capacity(7);
                    tail.extend_from_slice(&[0u8; 3][..wire::padding(slice.len)]);
                    if data_digest {
                        let sending = send_file_digested(&mut wr, slice, &mut scratch);
                        let digest = stalled_after(WRITE_STALL, sending).await?;
                        tail.extend_from_slice(&digest.to_le_bytes());
                    } else {
                        stalled_after(WRITE_STALL, send_file(wr.as_ref(), slice)).await?;
                    }
                    parts.push(tail.freeze());
                }
            }
            for part in parts.drain(..) {
                queue.push(part);
            }
            count += 1;
            if count < MAX_BATCH_PDUS && bytes::Buf::remaining(&queue) < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
                // Other commands still running will answer soon: let the tasks that are
                // ready run first (the yield defers this task behind them), so that their
                // replies go out in this system call instead of one each. Block-device reads
                // complete a few at a time on the runtime; one writev per PDU showed as
                // half the connection's CPU at 4 KiB QD32. At QD1 nothing else is in flight
                // and nothing waits.
                if next.is_none() && !yielded && window.in_flight() > 0 {
                    yielded = true;
                    tokio::task::yield_now().await;
                    next = rx.try_recv().ok();
                }
            }
        }
        stalled_after(WRITE_STALL, wr.write_all_buf(&mut queue)).await?;
    }
    wr.shutdown().await
}

/// `io`, failed with TimedOut if it makes no progress for `limit` (an initiator that stopped
/// reading).
async fn stalled_after<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(limit, io).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the initiator accepted no data for {limit:?}"),
        )),
    }
}

/// Sends `slice` of its file to `socket` with sendfile(2): the file's pages go to the socket
/// without a copy through user space. Only memory-resident files get here, so the file side
/// never waits for a disk; the socket side waits for room like any write.
async fn send_file(socket: &TcpStream, slice: &FileSlice) -> std::io::Result<()> {
    let mut offset = slice.offset;
    let end = slice.offset + slice.len as u64;
    while offset < end {
        socket.writable().await?;
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX);
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, &*slice.file, Some(&mut offset), want)
                .map_err(std::io::Error::from)
        });
        match sent {
            // The file ends before the range does (shrunk under keel): the PDU's length is
            // already on the wire, so the connection cannot go on.
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the backing file ended at {offset} inside a read's data"),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `slice` of its file through `scratch`, a buffer small enough to stay in the CPU
/// cache, computing the CRC32C data digest on the way (RFC 7143 §11.1): the copy into the
/// buffer, the digest and the socket's copy all touch the bytes while they are hot, where
/// reading the whole range into memory first would go to RAM and back for each pass.
/// Returns the digest over the data and its padding. The file is memory-resident: reading
/// it never waits for a disk.
async fn send_file_digested(
    wr: &mut OwnedWriteHalf,
    slice: &FileSlice,
    scratch: &mut [u8],
) -> std::io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut crc = 0;
    let mut done = 0;
    while done < slice.len {
        let n = scratch.len().min(slice.len - done);
        let chunk = &mut scratch[..n];
        slice
            .file
            .read_exact_at(chunk, slice.offset + done as u64)?;
        crc = crc32c::crc32c_append(crc, chunk);
        wr.write_all(chunk).await?;
        done += n;
    }
    Ok(crc32c::crc32c_append(
        crc,
        &[0u8; 3][..wire::padding(slice.len)],
    ))
}
