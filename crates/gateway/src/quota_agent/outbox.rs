//! Messages with lease reports that the leader has not acknowledged yet, and how they are sent
//! again after a reconnect (see the parent module's docs).

use std::collections::VecDeque;

use tollgate_proto::v1::{QuotaLeaseReport, QuotaUp};

/// One message kept for re-sending.
struct Kept {
    seq: u64,
    reports: Vec<QuotaLeaseReport>,
    /// The term of the leader of the stream it was last sent on, when that stream had said it.
    sent_term: Option<u64>,
}

/// Unacknowledged report messages, oldest first.
#[derive(Default)]
pub(super) struct Outbox {
    kept: VecDeque<Kept>,
}

impl Outbox {
    /// Keeps the reports of message `seq`, sent on a stream whose leader's term is `sent_term`.
    pub(super) fn push(
        &mut self,
        seq: u64,
        reports: Vec<QuotaLeaseReport>,
        sent_term: Option<u64>,
    ) {
        self.kept.push_back(Kept {
            seq,
            reports,
            sent_term,
        });
    }

    /// Messages kept, not yet acknowledged.
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The leader counted every message up to `acked_seq`: forget them.
    pub(super) fn ack(&mut self, acked_seq: u64) {
        while self.kept.front().is_some_and(|k| k.seq <= acked_seq) {
            self.kept.pop_front();
        }
    }

    /// Messages kept, oldest first, to send again on a new stream with their original `seq`.
    ///
    /// A report whose lease's term may be the term of the stream it went out on may have given
    /// its `returned` tokens back to that leader's chunk already: it goes again with `returned`
    /// zeroed (those tokens stay spent), so that no later leader releases them a second time.
    /// Only reports sent to a leader of a provably later term keep `returned`: the ledger applies
    /// their `Release` once, by (gateway, epoch, seq). The zeroing is remembered, since the stream
    /// the message goes out on now has an unknown term.
    pub(super) fn resend(&mut self) -> Vec<QuotaUp> {
        self.kept
            .iter_mut()
            .map(|kept| {
                for report in &mut kept.reports {
                    let later = kept.sent_term.is_some_and(|t| t > report.term);
                    if !later {
                        report.returned = 0;
                    }
                }
                kept.sent_term = None;
                QuotaUp {
                    hello: None,
                    seq: kept.seq,
                    demands: Vec::new(),
                    reports: kept.reports.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn report(lease_id: u64, term: u64, returned: u64) -> QuotaLeaseReport {
        QuotaLeaseReport {
            lease_id,
            term,
            key: "k".into(),
            window: 2,
            window_id: 1,
            consumed: 3,
            returned,
            closed: true,
        }
    }

    #[test]
    fn acknowledged_messages_are_forgotten_in_order() {
        let mut outbox = Outbox::default();
        outbox.push(1, vec![report(1, 1, 2)], Some(1));
        outbox.push(2, vec![report(2, 1, 2)], Some(1));
        outbox.push(4, vec![report(3, 1, 2)], Some(1));
        outbox.ack(2);
        assert_eq!(outbox.len(), 1);
        let again = outbox.resend();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].seq, 4);
    }

    #[test]
    fn a_report_sent_to_its_own_terms_leader_is_resent_without_returned_tokens() {
        let mut outbox = Outbox::default();
        outbox.push(1, vec![report(1, 5, 7)], Some(5));
        let again = outbox.resend();
        assert_eq!(again[0].reports[0].returned, 0);
        assert_eq!(again[0].reports[0].consumed, 3);
    }

    #[test]
    fn a_report_sent_on_a_stream_of_unknown_term_is_resent_without_returned_tokens() {
        let mut outbox = Outbox::default();
        outbox.push(1, vec![report(1, 5, 7)], None);
        assert_eq!(outbox.resend()[0].reports[0].returned, 0);
    }

    #[test]
    fn a_report_sent_to_a_later_leader_keeps_its_returned_tokens_once() {
        let mut outbox = Outbox::default();
        outbox.push(9, vec![report(1, 5, 7)], Some(6));
        let first = outbox.resend();
        assert_eq!(first[0].seq, 9);
        assert_eq!(first[0].reports[0].returned, 7);
        // Sent again on a stream whose term is not known: the next re-send may not carry them.
        let second = outbox.resend();
        assert_eq!(second[0].reports[0].returned, 0);
    }
}
