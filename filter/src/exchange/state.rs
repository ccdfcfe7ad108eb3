//! Where a request stands, as one value: every callback reads it instead of a set of flags that
//! could contradict each other.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestState {
    /// Headers read, body (if any) still arriving: nothing decided, nothing forwarded.
    #[default]
    Reading,
    /// Decided; the record is on its way to the control plane and the request waits for it.
    Recording,
    /// Recorded and held for an approver. `awaited` once the long poll was sent (a second
    /// "pending" then ends the wait); `counted` while the call counts in the approvals-pending
    /// gauge.
    Held { awaited: bool, counted: bool },
    /// Released to the upstream: after an acknowledged record, or `failed_open` without one.
    Forwarded { failed_open: bool },
    /// The filter answered itself; its own reply passes back through it untouched.
    Answered,
}

impl RequestState {
    /// Whether the request was decided (later body and trailer callbacks only keep it paused).
    pub fn decided(self) -> bool {
        self != Self::Reading
    }

    pub fn awaited_approval(self) -> bool {
        matches!(self, Self::Held { awaited: true, .. })
    }

    pub fn failed_open(self) -> bool {
        self == Self::Forwarded { failed_open: true }
    }
}
