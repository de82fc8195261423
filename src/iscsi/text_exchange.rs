//! Text Request/Response exchanges (RFC 7143 §6.1.1, §11.10): long requests arrive in several
//! PDUs with the C bit, long responses leave in several PDUs, each fetched by an empty Text
//! Request that echoes our Target Transfer Tag.

use bytes::{Bytes, BytesMut};

/// Longest text request we collect across continued PDUs.
const MAX_REQUEST_TEXT: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct TextExchange {
    request: BytesMut,
    /// Response bytes not sent yet, and the TTT the initiator must echo to get them.
    pending: Option<(u32, Bytes)>,
    next_ttt: u32,
}

/// What the caller should do with one Text Request.
#[derive(Debug, PartialEq, Eq)]
pub enum TextStep {
    /// More request text is coming: answer with an empty response (C=0, F=0) and wait.
    NeedMore,
    /// The request is complete: compute the response text and pass it to [`TextExchange::respond`].
    Request(Bytes),
    /// The initiator asks for the next part of a long response.
    Continue,
    /// The request is malformed (too long, or an unknown TTT).
    Error,
}

/// One Text Response PDU to send.
#[derive(Debug, PartialEq, Eq)]
pub struct TextChunk {
    pub data: Bytes,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub ttt: u32,
}

impl TextExchange {
    /// Feeds one Text Request (its C bit, TTT and data).
    pub fn receive(&mut self, continue_bit: bool, ttt: u32, data: &Bytes) -> TextStep {
        if ttt != crate::wire::RESERVED_TAG {
            return match &self.pending {
                Some((pending_ttt, _)) if *pending_ttt == ttt => TextStep::Continue,
                _ => TextStep::Error,
            };
        }
        // A new request abandons any unfinished response.
        self.pending = None;
        if self.request.len() + data.len() > MAX_REQUEST_TEXT {
            self.request.clear();
            return TextStep::Error;
        }
        self.request.extend_from_slice(data);
        if continue_bit {
            TextStep::NeedMore
        } else {
            TextStep::Request(std::mem::take(&mut self.request).freeze())
        }
    }

    /// Starts sending a response; returns its first PDU.
    pub fn respond(&mut self, text: Bytes, max_segment: u32) -> TextChunk {
        self.next_ttt = self.next_ttt.wrapping_add(1) % 0x7fff_ffff;
        self.pending = Some((self.next_ttt, text));
        self.next_chunk(max_segment)
    }

    /// The next PDU of the pending response.
    pub fn next_chunk(&mut self, max_segment: u32) -> TextChunk {
        let Some((ttt, rest)) = self.pending.take() else {
            return TextChunk {
                data: Bytes::new(),
                final_bit: true,
                continue_bit: false,
                ttt: crate::wire::RESERVED_TAG,
            };
        };
        let max = (max_segment as usize).max(512);
        if rest.len() <= max {
            return TextChunk {
                data: rest,
                final_bit: true,
                continue_bit: false,
                ttt: crate::wire::RESERVED_TAG,
            };
        }
        let data = rest.slice(..max);
        self.pending = Some((ttt, rest.slice(max..)));
        TextChunk {
            data,
            final_bit: false,
            continue_bit: true,
            ttt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RESERVED_TAG;

    #[test]
    fn long_responses_are_fetched_in_parts() {
        let mut x = TextExchange::default();
        assert_eq!(
            x.receive(
                false,
                RESERVED_TAG,
                &Bytes::from_static(b"SendTargets=All\0")
            ),
            TextStep::Request(Bytes::from_static(b"SendTargets=All\0"))
        );
        let first = x.respond(Bytes::from(vec![b'a'; 1300]), 512);
        assert!(first.continue_bit && !first.final_bit && first.data.len() == 512);
        assert_eq!(
            x.receive(false, first.ttt, &Bytes::new()),
            TextStep::Continue
        );
        let second = x.next_chunk(512);
        assert_eq!(second.ttt, first.ttt);
        let third = x.next_chunk(512);
        assert!(third.final_bit && third.data.len() == 276 && third.ttt == RESERVED_TAG);
        assert_eq!(x.receive(false, first.ttt, &Bytes::new()), TextStep::Error);
    }

    #[test]
    fn continued_requests_are_joined() {
        let mut x = TextExchange::default();
        assert_eq!(
            x.receive(true, RESERVED_TAG, &Bytes::from_static(b"SendTar")),
            TextStep::NeedMore
        );
        assert_eq!(
            x.receive(false, RESERVED_TAG, &Bytes::from_static(b"gets=All\0")),
            TextStep::Request(Bytes::from_static(b"SendTargets=All\0"))
        );
    }
}
